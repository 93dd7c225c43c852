"""The user data the AWS provider renders: valid cloud-config, valid shell, within EC2's limit,
and the master's wait-for-minions loop run for real against a stand-in ``salt`` command."""

from __future__ import annotations

import shutil
import socket
import stat
import subprocess
import textwrap

import pytest
import yaml

from cluster.providers.aws.bundle import build_bundle
from cluster.providers.aws.keys import ClusterKeys
from cluster.providers.aws.userdata import (
    TEMPLATES,
    USER_DATA_LIMIT,
    MasterBoot,
    deploy_pins,
    master_user_data,
    minion_user_data,
)
from cluster.state import write_private
from cluster.topology import plan_hosts

MINIONS = [h.name for h in plan_hosts(20)]  # the largest cluster we promise to fit


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> ClusterKeys:
    return ClusterKeys.load_or_create(tmp_path_factory.mktemp("keys"), MINIONS, "sqlgate")


@pytest.fixture(scope="module")
def rendered(keys) -> dict[str, str]:
    url = "https://bucket.s3.amazonaws.com/bundle.tar.gz?X-Amz-Signature=a&b='c'"
    master = master_user_data(MasterBoot(url, url + "&delete", "0" * 64, MINIONS), keys)
    return {"saltmaster": master,
            **{m: minion_user_data(m, "172.31.0.4", keys) for m in MINIONS}}


def test_templates_are_valid_shell():
    for script in TEMPLATES.glob("aws-*.sh"):
        checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert checked.returncode == 0, (script.name, checked.stderr)


def test_user_data_is_cloud_config_within_the_limit(rendered):
    for host, text in rendered.items():
        assert text.startswith("#cloud-config\n"), host
        assert len(text.encode()) < USER_DATA_LIMIT, host
        config = yaml.safe_load(text)
        assert config["hostname"] == host
        assert config["runcmd"] == [["/usr/local/sbin/sqlgate-bootstrap"]]


@pytest.mark.skipif(shutil.which("cloud-init") is None, reason="cloud-init is not installed")
def test_user_data_passes_cloud_init_schema(rendered, tmp_path):
    for host in ("saltmaster", "replica1"):
        path = tmp_path / f"{host}.yaml"
        path.write_text(rendered[host])
        checked = subprocess.run(["cloud-init", "schema", "--config-file", str(path)],
                                 capture_output=True, text=True)
        assert checked.returncode == 0 and "Valid cloud-config" in checked.stdout, checked.stderr


def env_of(text: str) -> str:
    files = {f["path"]: f["content"] for f in yaml.safe_load(text)["write_files"]}
    return files["/etc/sqlgate/bootstrap.env"]


def test_settings_survive_shell_quoting(rendered, tmp_path):
    env_file = tmp_path / "bootstrap.env"
    env_file.write_text(env_of(rendered["saltmaster"]))
    shown = subprocess.run(["bash", "-c", f'. {env_file}; printf "%s\\n" "$BUNDLE_URL" '
                            '"$SALT_VERSION" "$SALT_PIP_REQUIREMENTS" "$MINION_IDS"'],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    pins = deploy_pins()
    assert shown == [
        "https://bucket.s3.amazonaws.com/bundle.tar.gz?X-Amz-Signature=a&b='c'",
        pins["salt"],
        f"saltext.mysql=={pins['saltext.mysql']} PyMySQL=={pins['PyMySQL']}",
        ",".join(MINIONS),
    ]


def run_wait_for_minions(tmp_path, answers_after: int, wait_seconds: int):
    """Source the master's script with a fake ``salt`` that answers from call ``answers_after``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_salt = bin_dir / "salt"
    fake_salt.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        calls=$(( $(cat {tmp_path}/calls 2>/dev/null || echo 0) + 1 ))
        echo $calls > {tmp_path}/calls
        for id in gatekeeper proxy; do
            if [ $calls -ge {answers_after} ]; then echo "$id: True"; fi
        done
        echo "primary: Minion did not return. [No response]"
        """))
    fake_salt.chmod(0o755)
    env_file = tmp_path / "bootstrap.env"
    env_file.write_text(f"MINION_IDS=gatekeeper,proxy\nMINION_WAIT_SECONDS={wait_seconds}\n"
                        "MINION_POLL_SECONDS=0.1\n")
    script = TEMPLATES / "aws-master.sh"
    return subprocess.run(
        ["bash", "-c", f". {script}; wait_for_minions"],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "SQLGATE_ENV": str(env_file),
             "SQLGATE_COMMON": str(TEMPLATES / "aws-common.sh")},
        capture_output=True, text=True, timeout=60)


def test_master_waits_until_every_minion_answers(tmp_path):
    done = run_wait_for_minions(tmp_path, answers_after=3, wait_seconds=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "sqlgate-bootstrap: minions answering: 2/2"
    assert (tmp_path / "calls").read_text().strip() == "3"


def test_master_gives_up_after_its_deadline(tmp_path):
    done = run_wait_for_minions(tmp_path, answers_after=10**6, wait_seconds=1)
    assert done.returncode == 1
    assert "timed out waiting for the minions (0/2 answered)" in done.stdout


def run_wait_for_master(tmp_path, port: int, wait_seconds: int):
    env_file = tmp_path / "minion.env"
    env_file.write_text(f"MASTER_ADDRESS=127.0.0.1\nMASTER_PORT={port}\n"
                        f"MASTER_WAIT_SECONDS={wait_seconds}\nMASTER_POLL_SECONDS=0.1\n")
    return subprocess.run(
        ["bash", "-c", f". {TEMPLATES / 'aws-minion.sh'}; wait_for_master"],
        env={"PATH": "/usr/bin:/bin", "SQLGATE_ENV": str(env_file),
             "SQLGATE_COMMON": str(TEMPLATES / "aws-common.sh")},
        capture_output=True, text=True, timeout=60)


def test_minion_waits_for_the_master_to_listen(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        done = run_wait_for_master(tmp_path, listener.getsockname()[1], wait_seconds=20)
    assert done.returncode == 0, done.stdout + done.stderr


def test_minion_gives_up_when_the_master_never_listens(tmp_path):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, not listening: connections are refused
        done = run_wait_for_master(tmp_path, port, wait_seconds=1)
    assert done.returncode == 1
    assert f"the master 127.0.0.1:{port} did not answer in 1s" in done.stdout


# --- the master's files: owned by the master's user, the pillar private ----------------------

@pytest.fixture(scope="module")
def bundle(keys, tmp_path_factory) -> bytes:
    """A real bundle whose pillar has a file in a subdirectory (as write_pillar_tree makes)."""
    pillar = tmp_path_factory.mktemp("pillar")
    write_private(pillar / "top.sls", "base: {}\n")
    write_private(pillar / "sqlgate" / "gatekeeper.sls", "sqlgate: {}\n")
    return build_bundle(pillar, keys).data


def master_shell(tmp_path, call: str, salt_user: bool = True,
                 minions: tuple[str, ...] = ("gatekeeper",)) -> subprocess.CompletedProcess:
    """Source the master's script with ``/`` at ``tmp_path/root``; ``id``, ``chown``,
    ``systemctl`` and ``salt`` are stand-ins that log what they were asked (``salt``: every
    one of ``minions`` answers)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "calls.log"
    users = "salt|root" if salt_user else "root"
    stand_ins = {
        "id": f'case "$*" in "-gn salt"|"-gn root") echo "$2";; {users}) ;; *) exit 1;; esac',
        "chown": f'echo "chown $*" >> {log}',
        "systemctl": f'echo "systemctl $*" >> {log}',
        "salt": "".join(f'echo "{minion}: True"\n' for minion in minions),
    }
    for name, body in stand_ins.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env_file = tmp_path / "master.env"
    env_file.write_text("MINION_IDS=gatekeeper\nMINION_WAIT_SECONDS=5\nMINION_POLL_SECONDS=0.1\n")
    (tmp_path / "root").mkdir(exist_ok=True)
    return subprocess.run(
        ["bash", "-c", f". {TEMPLATES / 'aws-master.sh'}; {call}"],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "SQLGATE_ENV": str(env_file),
             "SQLGATE_COMMON": str(TEMPLATES / "aws-common.sh"),
             "SQLGATE_ROOT": str(tmp_path / "root")},
        capture_output=True, text=True, timeout=60)


def calls(tmp_path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize(("salt_user", "owner"), [(True, "salt:salt"), (False, "root:root")])
def test_the_pillar_becomes_the_master_users_and_nobody_elses(tmp_path, bundle, salt_user,
                                                              owner):
    """The onedir master runs as ``salt``: a pillar left root's 0700 by tar is never read."""
    (tmp_path / "bundle.tar.gz").write_bytes(bundle)
    stale = tmp_path / "root/srv/sqlgate/pillar/sqlgate/retired.sls"
    stale.parent.mkdir(parents=True)
    stale.write_text("old: secret\n")
    done = master_shell(tmp_path, f"unpack_bundle {tmp_path / 'bundle.tar.gz'}", salt_user)
    assert done.returncode == 0, done.stderr
    root = tmp_path / "root"
    pillar = root / "srv/sqlgate/pillar"
    assert calls(tmp_path) == [f"chown -R {owner} {root}/etc/salt/pki/master {pillar}"]
    assert (pillar / "sqlgate" / "gatekeeper.sls").read_text() == "sqlgate: {}\n"
    assert not stale.exists()  # the previous tree went first
    for path in [pillar, *pillar.rglob("*")]:
        expected = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
    assert (root / "srv/sqlgate/salt/top.sls").exists()


def test_an_update_restarts_the_master_only_when_its_configuration_changed(tmp_path, bundle):
    (tmp_path / "bundle.tar.gz").write_bytes(bundle)
    update = f"update_from_bundle {tmp_path / 'bundle.tar.gz'}"
    assert master_shell(tmp_path, update).returncode == 0
    assert "systemctl restart salt-master" in calls(tmp_path)  # nothing was there before
    (tmp_path / "calls.log").unlink()
    done = master_shell(tmp_path, update)
    assert done.returncode == 0, done.stderr
    assert not any(call.startswith("systemctl") for call in calls(tmp_path))


def test_first_boot_turns_cloud_init_off_for_later_boots(tmp_path):
    (tmp_path / "root/etc/cloud").mkdir(parents=True)
    assert master_shell(tmp_path, "first_boot_done").returncode == 0
    assert (tmp_path / "root/etc/cloud/cloud-init.disabled").exists()
    minion = (TEMPLATES / "aws-minion.sh").read_text()
    assert "first_boot_done" in minion.split("main() {")[1]


def test_scale_changes_the_minions_the_master_waits_for_and_forgets_the_removed(tmp_path,
                                                                                bundle):
    """``scale_to``: the new set in the master's settings before the update waits for it;
    ``forget_minions``: the removed ones' keys deleted and out of the set."""
    (tmp_path / "bundle.tar.gz").write_bytes(bundle)
    done = master_shell(tmp_path, f"scale_to gatekeeper,gatekeeper3 {tmp_path / 'bundle.tar.gz'}"
                                  " && grep MINION_IDS $SQLGATE_ENV",
                        minions=("gatekeeper", "gatekeeper3"))
    assert done.returncode == 0, done.stderr
    assert "MINION_IDS='gatekeeper,gatekeeper3'" in done.stdout
    key_log = tmp_path / "salt-key.log"
    (tmp_path / "bin" / "salt-key").write_text(f'#!/bin/bash\necho "$*" >> {key_log}\n')
    (tmp_path / "bin" / "salt-key").chmod(0o755)
    done = master_shell(tmp_path, "set_minions gatekeeper,gatekeeper3,proxy3 && "
                                  "forget_minions gatekeeper3 proxy3 && "
                                  "grep MINION_IDS $SQLGATE_ENV")
    assert done.returncode == 0, done.stderr
    assert "MINION_IDS='gatekeeper'" in done.stdout
    assert key_log.read_text().splitlines() == ["--delete=gatekeeper3 --yes",
                                                 "--delete=proxy3 --yes"]
