"""Salt's configuration and pre-seeded keys, the same for every provider, and what an
orchestration's output says."""

from __future__ import annotations

import stat

import yaml

from cluster import salt_setup


def test_keys_are_made_once_and_kept_private(tmp_path):
    keys = salt_setup.SaltKeys.load_or_create(tmp_path, ["primary", "proxy"])
    assert "BEGIN" in keys.master.private and keys.master.public != keys.minions["proxy"].public
    for path in tmp_path.rglob("*.p*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert salt_setup.SaltKeys.load_or_create(tmp_path, ["primary", "proxy"]) == keys


def test_the_master_accepts_exactly_the_pre_seeded_minions(tmp_path):
    keys = salt_setup.SaltKeys.load_or_create(tmp_path, ["primary", "proxy"])
    config = salt_setup.master_config(["/srv/salt"], "/srv/pillar", interface="10.0.0.2")
    files = {f.path: f for f in salt_setup.master_files(keys, config)}
    written = yaml.safe_load(files[salt_setup.MASTER_CONFIG].content)
    assert written["auto_accept"] is False and written["open_mode"] is False
    assert written["interface"] == "10.0.0.2"
    accepted = sorted(p for p in files if p.startswith(f"{salt_setup.MASTER_PKI}/minions/"))
    assert accepted == [f"{salt_setup.MASTER_PKI}/minions/primary",
                        f"{salt_setup.MASTER_PKI}/minions/proxy"]
    assert files[f"{salt_setup.MASTER_PKI}/master.pem"].mode == 0o400


def test_a_minion_trusts_only_its_master(tmp_path):
    keys = salt_setup.SaltKeys.load_or_create(tmp_path, ["proxy"])
    config = salt_setup.minion_config("proxy", "10.0.0.2")
    files = {f.path: f for f in salt_setup.minion_files(keys, "proxy", config)}
    assert files[f"{salt_setup.MINION_PKI}/minion_master.pub"].content == keys.master.public
    assert files[f"{salt_setup.MINION_PKI}/minion.pem"].mode == 0o400
    assert yaml.safe_load(files[salt_setup.MINION_CONFIG].content) == {
        "id": "proxy", "master": "10.0.0.2"}


def _step(result: bool, ret: dict | None = None, comment: str = "") -> dict:
    return {"result": result, "comment": comment, "changes": {"ret": ret or {}}}


def test_orchestration_summary_counts_changes_and_failures_but_not_preparation():
    output = {"data": {"saltmaster_master": {
        "salt_|-sqlgate-orch-mine_|-mine.update_|-function": _step(
            True, {"proxy": {"mine_|-x_|-x_|-x": {"changes": {"a": 1}}}}),
        "salt_|-sqlgate-orch-primary_|-sqlgate-orch-primary_|-state": _step(True, {
            "primary": {"file_|-sqlgate-db-config_|-/etc/x_|-managed": {"changes": {"diff": 1},
                                                                      "result": True},
                        "cmd_|-sqlgate-db-ready_|-x_|-run": {"changes": {}, "result": True}}}),
        "salt_|-sqlgate-orch-proxy_|-sqlgate-orch-proxy_|-state": _step(False, {
            "proxy": {"cmd_|-sqlgate-app-installed_|-x_|-run": {
                "changes": {"stderr": "no wheel"}, "result": False, "comment": "failed"}}},
            comment="one state failed"),
    }}}
    result = salt_setup.summarize_orchestration(output)
    assert not result.ok
    assert result.changed == {"primary": ["sqlgate-db-config"],
                              "proxy": ["sqlgate-app-installed"]}
    assert result.failed[0] == "sqlgate-orch-proxy: one state failed"
    assert "proxy: sqlgate-app-installed: failed stderr: no wheel" in result.failed[1]


def test_the_master_runs_as_the_salt_user_on_every_provider():
    from cluster.providers.aws.bundle import master_config as aws_master_config

    assert salt_setup.master_config(["/srv/salt"], "/srv/pillar")["user"] == "salt"
    assert aws_master_config()["user"] == salt_setup.MASTER_USER == "salt"
    assert salt_setup.MASTER_PKI in salt_setup.MASTER_DIRS


def test_a_state_run_summary_fails_a_minion_that_did_not_answer_or_could_not_render():
    returns = {
        "gatekeeper": {"file_|-sqlgate-gatekeeper-keys_|-/etc/k_|-managed": {
            "changes": {"diff": "new"}, "result": True}},
        "proxy": ["Rendering SLS 'base:sqlgate.proxy' failed: jinja error"],
    }
    result = salt_setup.summarize_states(returns, ["gatekeeper", "proxy", "primary"])
    assert result.changed == {"gatekeeper": ["sqlgate-gatekeeper-keys"]}
    assert not result.ok
    assert result.failed[0].startswith("proxy: ") and "Rendering SLS" in result.failed[0]
    assert result.failed[1] == "primary: no answer"
    assert salt_setup.summarize_states({"gatekeeper": {}}, ["gatekeeper"]).ok
