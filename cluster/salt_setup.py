"""Salt's side of every provider: the master's and the minions' configuration, their key pairs
and where those files go, and what the orchestration's output means.

Each provider only decides how the files reach its hosts (written into a namespace host, packed
into the master's bundle, carried in a minion's cloud-init), so both deployments run a master
and minions configured the same way:

* the master accepts exactly the minion keys it was pre-seeded with (``auto_accept`` and
  ``open_mode`` off), and every minion is pre-seeded with the master's public key, so no side
  trusts on first use;
* the master serves the formula (``salt/``) and the project's code from its file roots and the
  generated pillar from its pillar root;
* the master runs as the unprivileged ``salt`` user (as the onedir packages install it), so the
  pillar, which holds every secret of the cluster, must be that user's and nobody else's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cluster.state import write_private

SALT_KEY_BITS = 2048  # Salt's own default ``keysize``
# ``bootstrap.py salt``: wait long enough for a highstate of every host (Salt's own 5 s gives
# up on busy minions first); the operator's own -t wins, coming after.
OPERATOR_SALT_OPTIONS = ("--timeout=900",)
GATHER_JOB_TIMEOUT_S = 60
MASTER_CONFIG = "/etc/salt/master.d/sqlgate.conf"
MINION_CONFIG = "/etc/salt/minion.d/sqlgate.conf"
MASTER_PKI = "/etc/salt/pki/master"
MINION_PKI = "/etc/salt/pki/minion"
MASTER_USER = "salt"
# What the master writes besides its keys; ``MASTER_USER`` must own them.
MASTER_DIRS = (MASTER_PKI, "/var/cache/salt/master", "/var/log/salt", "/var/run/salt")
# Orchestration steps that only prepare the minions (sync, pillar, mine): their returns are
# bookkeeping, not changes of a host's configuration (salt/orch/init.sls, scale.sls).
PREPARATION_STEPS = (*(f"sqlgate-{orchestration}-{step}" for orchestration in ("orch", "scale")
                        for step in ("sync", "pillar", "mine")), "sqlgate-scale-sync-states")


@dataclass(frozen=True)
class KeyPair:
    private: str
    public: str


@dataclass(frozen=True)
class SaltFile:
    """A file Salt reads on a host: absolute path, content and mode."""

    path: str
    content: str
    mode: int = 0o644


def load_or_make(directory: Path, name: str, make: Callable[[], KeyPair]) -> KeyPair:
    """Read ``name.pem``/``name.pub`` under ``directory`` or create them with ``make()``
    (mode 0600), so that a second ``up`` reuses the keys the hosts already trust."""
    private, public = directory / f"{name}.pem", directory / f"{name}.pub"
    if private.exists() and public.exists():
        return KeyPair(private.read_text(), public.read_text())
    pair = make()
    write_private(private, pair.private)
    write_private(public, pair.public)
    return pair


def salt_pair() -> KeyPair:
    """An RSA pair in the formats Salt itself writes (salt.crypt.gen_keys)."""
    import salt.crypt  # heavy: imported only when keys are made

    private, public = salt.crypt.gen_keys(SALT_KEY_BITS)
    return KeyPair(private, public)


def salt_key_pair(directory: Path, name: str) -> KeyPair:
    """The Salt key pair ``name`` under ``directory``, made on first use."""
    return load_or_make(directory, name, salt_pair)


@dataclass(frozen=True)
class SaltKeys:
    """The master's pair and one pair per minion id, kept under ``<directory>/``."""

    master: KeyPair
    minions: dict[str, KeyPair] = field(default_factory=dict)

    @classmethod
    def load_or_create(cls, directory: Path, minion_ids: list[str]) -> SaltKeys:
        return cls(master=salt_key_pair(directory, "master"),
                   minions={mid: salt_key_pair(directory / "minions", mid)
                            for mid in minion_ids})


# The failover's events (fired by the database minions' watch job, sqlgate_db.watch) and the
# reactor SLS (salt/reactor/) that runs the failover runner for each.
REACTIONS = {"sqlgate/db/primary-unreachable": "failover.sls", "sqlgate/db/rejoin": "rejoin.sls"}


def master_config(file_roots: list[str], pillar_root: str, **settings: object) -> dict:
    """The master's settings: run as ``MASTER_USER``, serve these trees, never accept a key
    nobody pre-seeded; the formula's runners (``<formula>/_runners``: the failover runner)
    and its reactor, the first file root being the formula (``salt/``). ``settings`` adds
    what one provider needs (the interface to listen on, log levels)."""
    formula = file_roots[0].rstrip("/")
    return {
        "user": MASTER_USER,
        "auto_accept": False,
        "open_mode": False,
        "file_roots": {"base": list(file_roots)},
        "pillar_roots": {"base": [pillar_root]},
        "runner_dirs": [f"{formula}/_runners"],
        "reactor": [{tag: [f"{formula}/reactor/{sls}"]} for tag, sls in REACTIONS.items()],
        # How long a minion may take to say a job still runs on it: a highstate installing the
        # services on a loaded host (several at once on the local cluster's two cores) answers
        # late, and with Salt's 10 s the orchestration took one for gone ("did not return").
        "gather_job_timeout": GATHER_JOB_TIMEOUT_S,
        **settings,
    }


def minion_config(minion_id: str, master_address: str, **settings: object) -> dict:
    """A minion's settings: its fixed id and its one master."""
    return {"id": minion_id, "master": master_address, **settings}


def config_text(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False)


def master_files(keys: SaltKeys, config: dict) -> list[SaltFile]:
    """The master's configuration, its pair and every minion's public key (pre-accepted)."""
    return [
        SaltFile(MASTER_CONFIG, config_text(config)),
        SaltFile(f"{MASTER_PKI}/master.pem", keys.master.private, 0o400),
        SaltFile(f"{MASTER_PKI}/master.pub", keys.master.public),
        *(SaltFile(f"{MASTER_PKI}/minions/{mid}", pair.public)
          for mid, pair in sorted(keys.minions.items())),
    ]


def minion_files(keys: SaltKeys, minion_id: str, config: dict) -> list[SaltFile]:
    """One minion's configuration, its own pair and the master's public key."""
    own = keys.minions[minion_id]
    return [
        SaltFile(MINION_CONFIG, config_text(config)),
        SaltFile(f"{MINION_PKI}/minion.pem", own.private, 0o400),
        SaltFile(f"{MINION_PKI}/minion.pub", own.public),
        SaltFile(f"{MINION_PKI}/minion_master.pub", keys.master.public),
    ]


# --- the orchestration's output ----------------------------------------------------------

@dataclass(frozen=True)
class OrchestrationResult:
    ok: bool
    changed: dict[str, list[str]]  # minion -> ids of states that changed something
    failed: list[str]


def _state_id(key: str) -> str:
    """``module_|-id_|-name_|-function`` -> ``id``."""
    return key.split("_|-")[1] if "_|-" in key else key


def summarize_orchestration(output: dict) -> OrchestrationResult:
    """Changed and failed states per minion, from ``state.orchestrate --out=json``."""
    data = output.get("data", output)
    steps = next(iter(data.values()), {}) if isinstance(data, dict) else {}
    changed: dict[str, list[str]] = {}
    failed: list[str] = []
    if not isinstance(steps, dict):
        return OrchestrationResult(False, changed, [str(steps)])
    for step_key, step in steps.items():
        step_id = _state_id(step_key)
        if not step.get("result"):
            failed.append(f"{step_id}: {str(step.get('comment', ''))[:400]}")
        if step_id in PREPARATION_STEPS:
            continue
        for minion, states in (step.get("changes", {}).get("ret") or {}).items():
            if isinstance(states, dict):
                _collect(minion, states, changed, failed)
    return OrchestrationResult(not failed, changed, failed)


@dataclass(frozen=True)
class Step:
    """One step of an orchestration of function calls (salt/orch/rolling.sls): its state id,
    whether it passed, and what its minions answered (or why it did not run)."""

    id: str
    ok: bool
    answers: dict[str, object]
    comment: str = ""
    seconds: float | None = None  # how long it ran (Salt's ``duration``)


def orchestration_steps(output: dict) -> list[Step]:
    """The steps of ``state.orchestrate --out=json`` in the order they ran."""
    data = output.get("data", output)
    steps = next(iter(data.values()), {}) if isinstance(data, dict) else {}
    if not isinstance(steps, dict):
        return [Step("orchestration", False, {}, str(steps)[:400])]
    ordered = sorted(steps.items(), key=lambda item: item[1].get("__run_num__", 0))
    return [Step(_state_id(key), bool(step.get("result")),
                 dict((step.get("changes") or {}).get("ret") or {}),
                 str(step.get("comment", ""))[:400],
                 step["duration"] / 1000.0 if step.get("duration") is not None else None)
            for key, step in ordered]


def summarize_states(returns: Mapping[str, object], minions: list[str]) -> OrchestrationResult:
    """The same summary for ``salt --out=json <minions> state.apply ...``: a minion that did
    not answer, or answered with render errors (a list) rather than states, failed."""
    changed: dict[str, list[str]] = {}
    failed: list[str] = []
    for minion in minions:
        states = returns.get(minion)
        if isinstance(states, dict):
            _collect(minion, states, changed, failed)
        else:
            failed.append(f"{minion}: {str(states)[:400] if states else 'no answer'}")
    return OrchestrationResult(not failed, changed, failed)


def _collect(minion: str, states: dict, changed: dict[str, list[str]],
             failed: list[str]) -> None:
    for state_key, state in states.items():
        if not isinstance(state, dict):
            continue
        state_id = _state_id(state_key)
        if state.get("changes"):
            changed.setdefault(minion, []).append(state_id)
        if state.get("result") is False:
            stderr = str((state.get("changes") or {}).get("stderr", ""))[-400:]
            failed.append(f"{minion}: {state_id}: {str(state.get('comment'))[:300]}"
                          + (f" stderr: {stderr}" if stderr else ""))
