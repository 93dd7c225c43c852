"""What ``bootstrap.py restart --rolling`` makes of the orchestration's output
(``salt_setup.orchestration_steps``, ``cluster.rolling.report``): the steps in the order they
ran, one line each, and a failed step named with the hosts after it left alone."""

from __future__ import annotations

from cluster import rolling
from cluster.salt_setup import orchestration_steps


def step(sid: str, run: int, result: bool, ret: dict | None = None, comment: str = "") -> tuple:
    key = f"salt_|-{sid}_|-sqlgate_service.restart_|-function"
    return key, {"__run_num__": run, "result": result, "comment": comment,
                 "changes": {"ret": ret} if ret else {}}


def output(*steps: tuple) -> dict:
    return {"data": {"master_master": dict(steps)}}


def test_every_step_passed():
    said: list[str] = []
    steps = orchestration_steps(output(
        step("sqlgate-rolling-proxy2", 2, True,
             {"proxy2": {"restarted": True, "ready": True, "comment": "stopped started"}}),
        step("sqlgate-rolling-sync", 0, True, {"proxy": ["modules.sqlgate_service"]}),
        step("sqlgate-rolling-proxy", 1, True,
             {"proxy": {"restarted": True, "ready": True, "comment": "stopped started"}})))
    assert [s.id for s in steps] == ["sqlgate-rolling-sync", "sqlgate-rolling-proxy",
                                     "sqlgate-rolling-proxy2"]
    assert rolling.report(steps, said.append) == 0
    assert said[1] == "  ok     sqlgate-rolling-proxy: proxy: restarted True, ready True"
    assert said[-1] == "restart: 2 host(s) restarted, one at a time"


def test_a_failed_step_says_why_and_stops_the_run():
    said: list[str] = []
    steps = orchestration_steps(output(
        step("sqlgate-rolling-proxy", 0, False,
             {"proxy": {"restarted": False, "ready": False, "comment": "ERROR: no such process"}}),
        step("sqlgate-rolling-proxy2", 1, False,
             comment="One or more requisite failed: orch.rolling.sqlgate-rolling-proxy")))
    assert rolling.report(steps, said.append) == 1
    assert "comment ERROR: no such process" in said[0]  # the service manager's words
    assert said[1].endswith("One or more requisite failed: orch.rolling.sqlgate-rolling-proxy")
    assert said[-1] == ("restart stopped at sqlgate-rolling-proxy: the hosts after it were not "
                        "restarted")


def test_an_orchestration_that_did_not_render_is_a_failure():
    said: list[str] = []
    steps = orchestration_steps({"data": {"master_master": ["Rendering SLS failed"]}})
    assert rolling.report(steps, said.append) == 1
    assert "Rendering SLS failed" in said[0]
