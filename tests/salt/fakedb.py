"""A stand-in for ``cmd.run_all`` running the database client: it answers ``SHOW REPLICA
STATUS`` with a recorded output and records everything else it is asked to run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DATA = Path(__file__).parent / "data"


def recorded(name: str) -> str:
    """A recorded ``SHOW REPLICA STATUS\\G`` output (tests/salt/data/<name>.txt)."""
    return (DATA / f"{name}.txt").read_text()


@dataclass
class Call:
    argv: list[str]
    stdin: str
    kwargs: dict


@dataclass
class FakeClient:
    status: str = ""
    # SQL other than SHOW REPLICA STATUS: what it prints, or a failure.
    answer: str = ""
    retcode: int = 0
    stderr: str = ""
    # Called with the SQL it ran (not for SHOW REPLICA STATUS), e.g. to change the status.
    on_run: Callable[[str], None] | None = None
    calls: list[Call] = field(default_factory=list)

    def run_all(self, cmd, stdin=None, **kwargs) -> dict:
        self.calls.append(Call(list(cmd), stdin or "", kwargs))
        if (stdin or "").strip() == "SHOW REPLICA STATUS":
            return {"retcode": 0, "stdout": self.status, "stderr": "", "pid": 1}
        if self.on_run is not None:
            self.on_run(stdin or "")
        return {"retcode": self.retcode, "stdout": self.answer if not self.retcode else "",
                "stderr": self.stderr, "pid": 1}

    @property
    def statements(self) -> list[str]:
        """What it ran besides reading the status."""
        return [call.stdin for call in self.calls if call.stdin.strip() != "SHOW REPLICA STATUS"]
