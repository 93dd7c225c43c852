"""The Prometheus alerting rules of the monitor role (salt/sqlgate/monitor/files/
alerts.rules.yml.jinja): they render the way Salt renders them, promtool accepts them, and
promtool's own unit tests (tests/salt/alerts_test.yml) show each alert firing on its condition
after ``for``, and staying quiet on healthy series, on lag at the threshold, without traffic.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml

from cluster.formula import FORMULA_DIR, formula_settings
from tests.monitoring import require_tool
from tests.salt.saltcall import MINION

TEMPLATE = FORMULA_DIR / "monitor" / "files" / "alerts.rules.yml.jinja"
UNIT_TESTS = Path(__file__).with_name("alerts_test.yml")
# The values alerts_test.yml is written for (its thresholds and times follow from them).
UNIT_ALERTS = {"for": "2m", "replica_lag_seconds": 1, "error_ratio": 0.05, "p95_seconds": 0.5,
               "quarantine_for": "10m"}
# What the formula's defaults are expected to hold, until defaults.yaml has monitor:alerts.
FALLBACK_ALERTS = {"for": "1m", "replica_lag_seconds": 1, "error_ratio": 0.05,
                   "p95_seconds": 0.5, "quarantine_for": "10m"}
ALERTS = ("SqlgateTargetDown", "SqlgateDatabaseDown", "SqlgateReplicationStopped",
          "SqlgateReplicaLagHigh", "SqlgateHigh5xxRate", "SqlgateHigh503Rate",
          "SqlgateHighLatencyP95", "SqlgateNoPrimary", "SqlgatePrimarySemiSyncOff",
          "SqlgateFencedNode", "SqlgateFailover", "SqlgateQuarantinedNode")
# Alerts whose `for` is not `for`: a fenced node at once, a quarantined one after its own.
OWN_FOR = {"SqlgateFencedNode": "0s", "SqlgateQuarantinedNode": "10m"}


def render(alerts: dict) -> str:
    """As Salt's jinja renderer does for file.managed: plain Jinja, undefined names are errors,
    the trailing newline kept, ``alerts`` in the context."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(TEMPLATE.read_text()).render(alerts=alerts)


def formula_alerts() -> dict:
    """The formula's ``monitor:alerts`` (defaults.yaml), or the values this side expects of it."""
    return formula_settings().get("monitor", {}).get("alerts") or FALLBACK_ALERTS


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool("promtool", "prometheus")


def promtool_run(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)


def test_every_alert_has_severity_summary_and_description():
    rules = yaml.safe_load(render(UNIT_ALERTS))
    alerting = [rule for group in rules["groups"] for rule in group["rules"]]
    assert sorted({rule["alert"] for rule in alerting}) == sorted(ALERTS)
    for rule in alerting:
        assert rule["for"] == OWN_FOR.get(rule["alert"], "2m"), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        # Jinja left Prometheus's templates alone: they still name the host or node.
        assert "{{ $labels." in rule["annotations"]["summary"], rule["alert"]


def test_thresholds_come_from_alerts():
    text = render({"for": "30s", "replica_lag_seconds": 2.5, "error_ratio": 0.2,
                   "p95_seconds": 1, "quarantine_for": "7m"})
    assert "for: 30s" in text
    assert "for: 7m" in text and "for 7m:" in text  # SqlgateQuarantinedNode, and its text
    assert "sqlgate_proxy_replica_lag_seconds > 2.5" in text
    assert "mysql_slave_status_seconds_behind_master > 2.5" in text
    assert "> 0.2\n" in text and "threshold 0.2" in text
    assert "[5m]))) > 1\n" in text  # the p95 bound, printed as Prometheus reads it


def test_missing_key_fails_to_render():
    with pytest.raises(jinja2.UndefinedError):
        render({"for": "1m", "replica_lag_seconds": 1, "error_ratio": 0.05})


def test_rules_check_and_unit_tests_pass(promtool, tmp_path):
    (tmp_path / "alerts.rules.yml").write_text(render(UNIT_ALERTS))
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    checked = promtool_run(promtool, "check", "rules", "alerts.rules.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(ALERTS) + 1} rules found" in checked.stdout  # TargetDown is two
    tested = promtool_run(promtool, "test", "rules", UNIT_TESTS.name, cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_unit_tests_catch_a_wrong_threshold(promtool, tmp_path):
    """The unit tests are not vacuous: a lag threshold of 2 s misses the 1.5 s replica."""
    (tmp_path / "alerts.rules.yml").write_text(render({**UNIT_ALERTS,
                                                       "replica_lag_seconds": 2}))
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    tested = promtool_run(promtool, "test", "rules", UNIT_TESTS.name, cwd=tmp_path)
    assert tested.returncode != 0
    assert "SqlgateReplicaLagHigh" in tested.stdout + tested.stderr


def test_formula_defaults_render_valid_rules(promtool, tmp_path):
    alerts = formula_alerts()
    (tmp_path / "alerts.rules.yml").write_text(render(alerts))
    checked = promtool_run(promtool, "check", "rules", "alerts.rules.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"for: {alerts['for']}" in (tmp_path / "alerts.rules.yml").read_text()


def test_salt_renders_the_same(salt_call, tmp_path):
    """Salt's own jinja renderer (cp.get_template, as file.managed with template: jinja and
    ``context: {alerts: ...}``) gives exactly what the tests check."""
    dest = tmp_path / "alerts.rules.yml"
    salt_call.run(MINION, "cp.get_template",
                  "salt://sqlgate/monitor/files/alerts.rules.yml.jinja", str(dest),
                  f"alerts={json.dumps(UNIT_ALERTS)}")
    assert dest.read_text() == render(UNIT_ALERTS)
