"""Talking to the running cluster: the Gatekeeper over HTTPS, Salt on the master over SSH.

``status`` runs ``salt`` on the master through SSH as ``ubuntu`` with the admin key that ``up``
imported, against a known_hosts line for the master's pre-generated host key (no
trust-on-first-use). SSH is open to the admin CIDR only. A second ``up`` (and ``keys --apply``)
sends the master a new bundle the same way and runs Salt there.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from cluster import access, salt_setup
from cluster.formula import db_settings
from cluster.providers.aws.keys import ClusterKeys, known_hosts_line
from cluster.record import ClusterRecord
from cluster.topology import DATABASE_SERVICE, ROLES

MASTER_ALIAS = "sqlgate-saltmaster"  # known_hosts name of the master, whatever its address
HEALTH_POLL_S = 10
AWS_DB_FLAVOUR = "mysql"  # Ubuntu's, as in salt/sqlgate/osmap.yaml
MASTER_SCRIPT = "/usr/local/sbin/sqlgate-bootstrap"  # the master's first-boot script
ORCHESTRATION_TIMEOUT_S = 1800


def role_services() -> dict[str, str]:
    """The service each role runs on AWS; the database's name comes from the formula."""
    database = db_settings(AWS_DB_FLAVOUR)["service"]
    return {role: database if spec.service == DATABASE_SERVICE else spec.service
            for role, spec in ROLES.items() if spec.service}


def write_known_hosts(path: Path, keys: ClusterKeys) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(known_hosts_line(MASTER_ALIAS, keys.ssh_host))


def wait_for_health(url: str, deadline_s: float, say: Callable[[str], None],
                    **trust) -> bool:
    """Poll ``url/health`` until it answers 200 or ``deadline_s`` passes; progress each minute.
    ``trust``: how the certificate is checked (``access.get_status``)."""
    say(f"waiting up to {deadline_s / 60:.0f} min for {url}/health")
    start = time.monotonic()
    if not access.wait_for_health(url, deadline_s, poll_s=HEALTH_POLL_S, progress=say,
                                  **trust):
        return False
    say(f"{url}/health answered after {(time.monotonic() - start) / 60:.1f} min")
    return True


def print_access(url: str, cluster_file: Path, ca_file: str | None,
                 say: Callable[[str], None]) -> None:
    for line in access.access_lines(url, f'"api_key" in {cluster_file}',
                                    access.key_from_json(cluster_file), ca_file):
        say(line)


# --- Salt on the master ------------------------------------------------------------------

def ssh_command(recorded: ClusterRecord, address: str, remote: list[str]) -> list[str]:
    """``ssh`` to the master, host key pinned; the remote command quoted for its shell."""
    ssh = recorded.provider_data
    command = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
               "-o", "StrictHostKeyChecking=yes", "-o", f"HostKeyAlias={MASTER_ALIAS}",
               "-o", f"UserKnownHostsFile={ssh['known_hosts_file']}"]
    if ssh.get("ssh_key_file"):
        command += ["-i", ssh["ssh_key_file"], "-o", "IdentitiesOnly=yes"]
    return [*command, f"{ssh.get('ssh_user', 'ubuntu')}@{address}", shlex.join(remote)]


def _remote_json(recorded: ClusterRecord, address: str, remote: list[str],
                 timeout_s: float = 120) -> dict:
    done = subprocess.run(ssh_command(recorded, address, remote), capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    if done.returncode not in (0, 1, 2) or not done.stdout.strip():
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip()
                           else f"ssh exited {done.returncode}")
    return json.loads(done.stdout)


def salt_json(recorded: ClusterRecord, address: str, target: list[str], *fun: str,
              timeout_s: float = 20) -> dict:
    """``salt -L target fun...`` on the master; the minions' returns by id."""
    remote = ["sudo", "salt", "--out=json", "--static", f"--timeout={timeout_s:g}", "-L",
              ",".join(target), *fun]
    return _remote_json(recorded, address, remote, timeout_s + 100)


def master_function(function: str, *args: str) -> list[str]:
    """A function of the master's first-boot script, run as root on the master."""
    return ["sudo", "bash", "-c", f'. {MASTER_SCRIPT} && {function} "$@"', "sqlgate", *args]


def push_bundle(recorded: ClusterRecord, address: str, bundle: bytes) -> None:
    """The master takes a new bundle (Salt tree, pillar, code) on stdin, as its first boot
    took the one from S3 (``update_from_bundle``)."""
    done = subprocess.run(ssh_command(recorded, address,
                                      master_function("update_from_bundle", "/dev/stdin")),
                          input=bundle, capture_output=True, timeout=900, check=False)
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"the master did not take the new bundle ({done.returncode}): "
                           f"{tail[0]}")


def push_scaled_bundle(recorded: ClusterRecord, address: str, bundle: bytes,
                       minion_ids: list[str]) -> None:
    """``scale``: the master's minions become ``minion_ids`` (it waits until they all
    answer), with the bundle that configures them (``scale_to``)."""
    done = subprocess.run(ssh_command(recorded, address, master_function(
        "scale_to", ",".join(minion_ids), "/dev/stdin")), input=bundle, capture_output=True,
        timeout=900, check=False)
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"the master did not take the new minions ({done.returncode}): "
                           f"{tail[0]}")


def forget_minions(recorded: ClusterRecord, address: str, names: list[str]) -> None:
    """The removed minions' keys deleted on the master (``forget_minions``)."""
    subprocess.run(ssh_command(recorded, address, master_function("forget_minions", *names)),
                   capture_output=True, timeout=120, check=False)


def run_orchestration(recorded: ClusterRecord, address: str) -> salt_setup.OrchestrationResult:
    """``state.orchestrate orch`` on the master, as its first boot ran it."""
    return salt_setup.summarize_orchestration(orchestration_output(recorded, address, "orch"))


def orchestration_output(recorded: ClusterRecord, address: str, name: str,
                         pillar: dict | None = None) -> dict:
    """``state.orchestrate <name>`` on the master (salt/orch/<name>.sls), with ``pillar``
    added to the orchestration's own: its JSON output."""
    extra = [f"pillar={json.dumps(pillar)}"] if pillar else []
    return _remote_json(recorded, address,
                        ["sudo", "salt-run", "state.orchestrate", name, *extra, "--out=json"],
                        ORCHESTRATION_TIMEOUT_S)


def failover_runner(recorded: ClusterRecord, address: str, function: str,
                    *args: str) -> dict:
    """``salt-run sqlgate_failover.<function>`` on the master (the runner the reactor calls:
    salt/_runners/sqlgate_failover.py), as root; its answer."""
    answer = _remote_json(recorded, address, ["sudo", "salt-run", "--out=json",
                                              f"sqlgate_failover.{function}", *args],
                          ORCHESTRATION_TIMEOUT_S)
    if not isinstance(answer, dict):
        raise RuntimeError(f"sqlgate_failover.{function}: {str(answer)[:300]}")
    return answer


def wait_for_minion(recorded: ClusterRecord, address: str, minion: str,
                    deadline_s: float) -> bool:
    """Until ``minion`` answers ``test.ping`` through the master (an instance just started
    again); whether it did within ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if salt_json(recorded, address, [minion], "test.ping", timeout_s=10).get(minion):
                return True
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError):
            pass  # the master itself may be busy: ask again
        time.sleep(HEALTH_POLL_S)
    return False


def apply_states(recorded: ClusterRecord, address: str, minions: list[str],
                 states: str) -> salt_setup.OrchestrationResult:
    """Fresh pillar, then ``states`` on ``minions`` (a new key set on the Gatekeeper)."""
    salt_json(recorded, address, minions, "saltutil.refresh_pillar", "wait=True", timeout_s=60)
    returns = salt_json(recorded, address, minions, "state.apply", states, timeout_s=300)
    return salt_setup.summarize_states(returns, minions)


def print_remote_status(recorded: ClusterRecord, instances: dict[str, dict],
                        say: Callable[[str], None], **trust) -> int:
    """Health, each host's service (through Salt: no answer = minion down) and replication.
    ``trust``: how the Gatekeeper's certificate is checked (``access.get_status``)."""
    url = recorded.gatekeeper_url
    healthy = bool(url) and access.health_ok(url, **trust)
    say(f"gatekeeper {url}/health: {'ok' if healthy else 'NOT answering'}")
    master = instances.get("saltmaster", {}).get("PublicIpAddress")
    if not master:
        say("the Salt master has no public address: cannot ask Salt")
        return 1
    roles = {h.name: h.role for h in recorded.hosts if h.role != "saltmaster"}
    services = role_services()
    say(f"through Salt on the master (ssh ubuntu@{master}):")

    def ask(targets: list[str], call: tuple[str, ...]) -> dict:
        return salt_json(recorded, master, targets, *call)

    try:
        running: dict[str, object] = {}
        for service in sorted(set(services.values())):
            targets = [name for name, role in roles.items() if services[role] == service]
            running.update(ask(targets, ("service.status", service)))
        replication = access.replication_report(
            ask, sorted(name for name, role in roles.items() if role == "replica"),
            sorted(name for name, role in roles.items() if role == "proxy"))
    except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as error:
        say(f"  cannot reach Salt on the master: {error}")
        return 1
    for name, role in sorted(roles.items()):
        state = {True: "running", False: "STOPPED"}.get(running.get(name), "no answer")
        say(f"  {name:<12} {services[role]:<20} {state}")
    all_ok = healthy and all(running.get(name) is True for name in roles)
    for replica, (fields, rotation) in replication.items():
        say(f"  {replica:<12} " + "  ".join(f"{k}={v}" for k, v in fields.items()))
        say(f"  {'':<12} {rotation}")
        all_ok = all_ok and access.replication_running(fields)
    return 0 if all_ok else 1
