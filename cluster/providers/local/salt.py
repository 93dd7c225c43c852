"""Salt on the local cluster: the master and minions of ``cluster.salt_setup`` written into
their namespace hosts, started from this machine's virtualenv, and the ``salt`` commands that
``up`` and ``status`` run on the master.

The master runs as the ``salt`` user of its host, as on AWS: the user is made inside the
master's host (its ``/etc`` is an overlay), the formula, the project's code and the pillar are
bound into the host under ``MASTER_ROOTS`` (the cluster's state directory stays private), the
interpreter's directories are made reachable there, and the pillar belongs to ``salt`` alone.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from cluster import salt_setup
from cluster.errors import ClusterError
from cluster.providers.local.cluster import VENV_BIN, LocalCluster
from cluster.providers.local.hosts import NamespaceHost
from cluster.state import PROJECT_ROOT, write_private
from cluster.waiting import wait_until

MINION_DEADLINE_S = 120
ORCHESTRATION_TIMEOUT_S = 1200
# Inside the master's host: the formula, the project's code and wheelhouse, the pillar.
MASTER_ROOTS = "/run/sqlgate-master"
FORMULA_ROOT, SOURCE_ROOT, PILLAR_ROOT = (f"{MASTER_ROOTS}/{name}"
                                          for name in ("salt", "source", "pillar"))
ADD_MASTER_USER = (
    f"id -u {salt_setup.MASTER_USER} >/dev/null 2>&1 || useradd --system --user-group "
    f"--home-dir /var/cache/salt --no-create-home --shell /usr/sbin/nologin "
    f"{salt_setup.MASTER_USER}")


def hosts_file(cluster: LocalCluster) -> str:
    lines = ["127.0.0.1 localhost", *(f"{h.address} {h.name}" for h in cluster.hosts)]
    return "\n".join(lines) + "\n"


def prepare_master(cluster: LocalCluster, fileserver: Path, pillar_dir: Path) -> None:
    """The master's host gets its ``salt`` user and, under ``MASTER_ROOTS``, the trees the
    master serves; the interpreter and the virtualenv become reachable for that user."""
    master = cluster.master
    master.run(["sh", "-ec", ADD_MASTER_USER])
    master.share({FORMULA_ROOT: PROJECT_ROOT / "salt", SOURCE_ROOT: fileserver,
                  PILLAR_ROOT: pillar_dir},
                 reachable=[Path(sys.base_prefix), Path(sys.prefix)])


def master_user_ids(cluster: LocalCluster) -> tuple[int, int]:
    """uid and gid of ``salt`` in the master's host (the same numbers on this machine)."""
    found = cluster.master.run(["sh", "-c", f"id -u {salt_setup.MASTER_USER}; "
                                            f"id -g {salt_setup.MASTER_USER}"]).stdout.split()
    return int(found[0]), int(found[1])


def own_master_files(cluster: LocalCluster, pillar_dir: Path) -> None:
    """The master's own directories and the pillar belong to ``salt``; the pillar (every
    secret of the cluster) is readable by nobody else: directories 0700, files 0600."""
    user = salt_setup.MASTER_USER
    dirs = " ".join(salt_setup.MASTER_DIRS)
    # The files were written with umask 077: the directories above the master's own must let
    # its user through (they hold nothing secret; the keys' directory stays 0700).
    parents = " ".join(sorted({str(Path(d).parent) for d in salt_setup.MASTER_DIRS}
                              | {str(Path(salt_setup.MASTER_CONFIG).parent.parent),
                                 str(Path(salt_setup.MASTER_CONFIG).parent)}))
    cluster.master.run(["sh", "-ec", f"mkdir -p {dirs} && chown -R {user}:{user} {dirs} && "
                                     f"chmod 0755 {parents}"])
    uid, gid = master_user_ids(cluster)
    os.chown(pillar_dir, uid, gid)
    os.chmod(pillar_dir, 0o700)
    for root, dirs_in, files in os.walk(pillar_dir):
        for name in dirs_in:
            os.chown(Path(root) / name, uid, gid)
            os.chmod(Path(root) / name, 0o700)
        for name in files:
            os.chown(Path(root) / name, uid, gid)
            os.chmod(Path(root) / name, 0o600)


def configure_salt(cluster: LocalCluster) -> None:
    """Configs and pre-seeded keys: the master accepts exactly our minions, they trust it."""
    master = cluster.master
    keys = salt_setup.SaltKeys.load_or_create(cluster.state_dir / "salt-pki",
                                              [m.name for m in cluster.minions])
    master_config = salt_setup.master_config(
        [FORMULA_ROOT, SOURCE_ROOT], PILLAR_ROOT,
        interface=master.address, worker_threads=4, log_level_logfile="info")
    for item in salt_setup.master_files(keys, master_config):
        master.write_file(item.path, item.content, item.mode)
    text = hosts_file(cluster)
    for host in cluster.hosts:
        host.write_file("/etc/hosts", text)
    for minion in cluster.minions:
        config = salt_setup.minion_config(
            minion.name, master.address, enable_fqdns_grains=False, acceptance_wait_time=1,
            random_reauth_delay=0, log_level_logfile="info")
        for item in salt_setup.minion_files(keys, minion.name, config):
            minion.write_file(item.path, item.content, item.mode)


def forget_minion(cluster: LocalCluster, name: str) -> None:
    """A removed host's minion key: no longer accepted by the master, and its pair gone from
    the state directory."""
    cluster.master.run([str(VENV_BIN / "salt-key"), f"--delete={name}", "--yes"], check=False)
    for suffix in ("pem", "pub"):
        (cluster.state_dir / "salt-pki" / "minions" / f"{name}.{suffix}").unlink(missing_ok=True)


def runs(host: NamespaceHost, program: str) -> bool:
    return any(program in line for line in host.command_lines())


def start_salt(cluster: LocalCluster) -> None:
    if not runs(cluster.master, "salt-master"):
        cluster.master.start_daemon([str(VENV_BIN / "salt-master"), "-d"])
    for minion in cluster.minions:
        if not runs(minion, "salt-minion"):
            minion.start_daemon([str(VENV_BIN / "salt-minion"), "-d"])


def salt_command(cluster: LocalCluster) -> list[str]:
    """``salt`` on the master, as a command line that runs from this machine."""
    return cluster.master.enter([str(VENV_BIN / "salt")])


def salt(cluster: LocalCluster, *args: str, timeout: float = 120) -> object:
    """Run a ``salt`` command on the master; its JSON output."""
    result = cluster.master.run([str(VENV_BIN / "salt"), "--out=json", "--static", *args],
                                check=False, timeout=timeout)
    try:
        return json.loads(result.stdout or "{}")
    except json.JSONDecodeError:
        raise ClusterError(f"salt {' '.join(args)}: {result.stderr.strip()[-300:]}") from None


def wait_for_minions(cluster: LocalCluster) -> None:
    names = ",".join(m.name for m in cluster.minions)
    answered: dict = {}

    def all_answer() -> bool:
        nonlocal answered
        reply = salt(cluster, "-L", names, "test.ping", "-t", "5")
        answered = reply if isinstance(reply, dict) else {}
        return all(answered.get(m.name) is True for m in cluster.minions)

    try:  # a master not answering yet raises ClusterError: tolerated until the deadline
        wait_until(all_answer, MINION_DEADLINE_S, "the minions", interval=1,
                   tolerate=(ClusterError,))
    except TimeoutError:
        missing = [m.name for m in cluster.minions if answered.get(m.name) is not True]
        raise ClusterError(f"minions not answering after {MINION_DEADLINE_S}s: "
                           f"{', '.join(missing)}") from None


def apply_states(cluster: LocalCluster, minions: list[str], states: str) -> dict:
    """Fresh pillar, then ``states`` on ``minions``: the returns by minion (state id ->
    result), for a change that needs no orchestration (a new key set)."""
    targets = ",".join(minions)
    salt(cluster, "-L", targets, "saltutil.refresh_pillar", "wait=True", "-t", "60")
    answer = salt(cluster, "-L", targets, "state.apply", states, "-t", "300", timeout=400)
    return answer if isinstance(answer, dict) else {}


def failover_runner(cluster: LocalCluster, function: str, *args: str,
                    timeout: float = 600) -> dict:
    """``salt-run sqlgate_failover.<function>`` on the master (the runner the reactor calls:
    salt/_runners/sqlgate_failover.py); its answer."""
    result = cluster.master.run([str(VENV_BIN / "salt-run"), "--out=json",
                                 f"sqlgate_failover.{function}", *args],
                                check=False, timeout=timeout)
    try:
        answer = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise ClusterError(f"sqlgate_failover.{function}: "
                           f"{(result.stderr or result.stdout).strip()[-300:]}") from None
    if not isinstance(answer, dict):
        raise ClusterError(f"sqlgate_failover.{function}: {str(answer)[:300]}")
    return answer


def orchestrate(cluster: LocalCluster) -> salt_setup.OrchestrationResult:
    return salt_setup.summarize_orchestration(orchestration_output(cluster, "orch"))


def orchestration_output(cluster: LocalCluster, name: str, pillar: dict | None = None) -> dict:
    """``salt-run state.orchestrate <name>`` on the master (salt/orch/<name>.sls), with
    ``pillar`` added to the orchestration's own; its JSON output, also kept in the state
    directory (``<name>.json``)."""
    cluster.master.run([str(VENV_BIN / "salt-run"), "fileserver.update"], check=False)
    extra = [f"pillar={json.dumps(pillar)}"] if pillar else []
    result = cluster.master.run([str(VENV_BIN / "salt-run"), "state.orchestrate", name,
                                 *extra, "--out=json"], check=False,
                                timeout=ORCHESTRATION_TIMEOUT_S)
    file_name = "orchestrate.json" if name == "orch" else f"{name.replace('.', '-')}.json"
    write_private(cluster.state_dir / file_name, result.stdout)
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        raise ClusterError(f"the orchestration {name} printed no result: "
                           f"{(result.stderr or result.stdout).strip()[-500:]}") from None
