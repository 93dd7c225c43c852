"""The API keys of one cluster: ``bootstrap.py keys list|add|revoke``, and what ``up`` puts in
the pillar.

The key set is a JSON file in the cluster's private directory, in the shape of the Gatekeeper's
keys file (``{"keys": [{"name", "scope", "sha256", "rate", "burst"}]}``): a name, a scope
(``services.contract.SCOPES``), the SHA-256 of the secret and a token bucket (``rate`` requests
per second, 0 = unlimited; ``burst`` requests at once). Only hashes are kept, so the file, the
pillar and the Gatekeeper's host never hold a secret that works: a key's secret is shown once,
by ``add``, and never stored. The exception is ``admin``, whose secret is the cluster's
generated ``api_key`` (in the secrets file and the cluster record): the demo, the load tests and
``status`` use it.

Changing the set only changes the file; the next ``up`` (or ``keys ... --apply``) carries it to
the Gatekeeper, which reloads its keys file without a restart.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from cluster.errors import ClusterError
from cluster.salt_setup import OrchestrationResult
from cluster.state import write_private
from services.contract import SCOPES

# The Gatekeeper's own hash, so the key set written here is the one it compares with.
from services.gatekeeper.keys import hash_secret

KEYS_FILE = "api_keys.json"
ADMIN_KEY = "admin"
# A new key is rate-limited unless asked otherwise: a leaked key cannot flood the cluster.
DEFAULT_SCOPE = "read"
DEFAULT_RATE = 50.0
DEFAULT_BURST = 100
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SECRET_BYTES = 32


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


@dataclass(frozen=True)
class ApiKey:
    name: str
    scope: str
    sha256: str
    rate: float = 0.0
    burst: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise ClusterError(f"key name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit")
    return name


def check_limits(rate: float, burst: int) -> None:
    if not rate >= 0:  # also refuses NaN
        raise ClusterError(f"--rate {rate}: requests per second, 0 (unlimited) or more")
    if burst < 0:
        raise ClusterError(f"--burst {burst}: 0 or more requests")
    if rate > 0 and burst < 1:
        raise ClusterError(f"--burst {burst}: a limited key needs a burst of at least 1")


@dataclass(frozen=True)
class KeySet:
    """The keys of one cluster, in the order they were added."""

    keys: tuple[ApiKey, ...] = ()

    @classmethod
    def load(cls, path: Path) -> KeySet:
        if not path.exists():
            return cls()
        try:
            entries = json.loads(path.read_text())["keys"]
            return cls(tuple(ApiKey(**entry) for entry in entries))
        except (ValueError, KeyError, TypeError) as error:
            raise ClusterError(f"{path} is not a key set ({error}): fix or remove it") from None

    def save(self, path: Path) -> Path:
        """Written whole, mode 0600 (hashes only, but nobody else needs to read them)."""
        return write_private(path, json.dumps(self.to_json(), indent=2) + "\n")

    def to_json(self) -> dict:
        return {"keys": [key.to_json() for key in self.keys]}

    def get(self, name: str) -> ApiKey | None:
        return next((key for key in self.keys if key.name == name), None)

    def add(self, name: str, scope: str = DEFAULT_SCOPE, rate: float = DEFAULT_RATE,
            burst: int = DEFAULT_BURST) -> tuple[KeySet, str]:
        """The set with a new key, and the key's secret (to show once, then forget)."""
        check_name(name)
        if name == ADMIN_KEY:
            raise ClusterError(f"the name {ADMIN_KEY!r} is the cluster's own key's: choose another")
        if scope not in SCOPES:
            raise ClusterError(f"--scope {scope!r}: one of {', '.join(SCOPES)}")
        check_limits(rate, burst)
        if self.get(name):
            raise ClusterError(f"there is already a key named {name!r}: revoke it first, or "
                               "choose another name")
        secret = new_secret()
        return KeySet((*self.keys, ApiKey(name, scope, hash_secret(secret), rate, burst))), secret

    def revoke(self, name: str) -> KeySet:
        if name == ADMIN_KEY:
            raise ClusterError(f"the {ADMIN_KEY!r} key is the cluster's own (cluster record, demo, "
                               "status): it cannot be revoked")
        if not self.get(name):
            known = ", ".join(key.name for key in self.keys) or "none"
            raise ClusterError(f"no key named {name!r} (keys: {known})")
        return KeySet(tuple(key for key in self.keys if key.name != name))

    def with_admin(self, secret: str) -> KeySet:
        """The set with the ``admin`` key of this secret (first, admin scope, unlimited):
        added when missing, its hash brought back when it does not match."""
        admin = ApiKey(ADMIN_KEY, "admin", hash_secret(secret))
        current = self.get(ADMIN_KEY)
        if current == admin:
            return self
        if current is not None:
            return KeySet(tuple(admin if key.name == ADMIN_KEY else key for key in self.keys))
        return KeySet((admin, *self.keys))

    def pillar(self) -> list[dict]:
        """What the pillar's ``sqlgate:api_keys`` holds: the entries, hashes only."""
        return [key.to_json() for key in self.keys]


def prepare(path: Path, admin_secret: str) -> KeySet:
    """What ``up`` deploys: the stored set with the cluster's ``admin`` key, saved back."""
    keyset = KeySet.load(path).with_admin(admin_secret)
    keyset.save(path)
    return keyset


# --- the command line ---------------------------------------------------------------------

def describe(key: ApiKey) -> str:
    limit = "unlimited" if key.rate == 0 else f"{key.rate:g}/s, burst {key.burst}"
    return f"{key.name:<20} {key.scope:<6} {limit:<24} sha256 {key.sha256[:12]}..."


def run(args, path: Path, admin_secret: str | None,
        apply: Callable[[KeySet], int] | None) -> int:
    """``keys list|add|revoke`` on the key set at ``path``. ``admin_secret``: the cluster's
    ``api_key`` once ``up`` made it (None before). ``apply``: pushes the set to the running
    Gatekeeper (``--apply``), None when the provider cannot (no cluster)."""
    stored = KeySet.load(path)
    keyset = stored.with_admin(admin_secret) if admin_secret else stored
    if args.action == "list":
        if not keyset.keys:
            print(f"no keys yet ({path}): 'up' creates the {ADMIN_KEY!r} key")
        for key in keyset.keys:
            print(describe(key))
        return 0
    if not args.name:
        raise ClusterError(f"keys {args.action} needs the key's NAME")
    if args.action == "add":
        keyset, secret = keyset.add(args.name, args.scope, args.rate, args.burst)
        keyset.save(path)
        added = keyset.get(args.name)
        print(f"added key {describe(added)}")
        print(f"secret (shown this once, stored nowhere): {secret}")
    else:
        keyset = keyset.revoke(args.name)
        keyset.save(path)
        print(f"revoked key {args.name!r}")
    if not args.apply:
        print("the Gatekeeper keeps its current keys until the next 'bootstrap.py up' applies "
              "this set (or run the command with --apply)")
        return 0
    if apply is None:
        raise ClusterError("--apply: no running cluster (run 'bootstrap.py up'); the key set "
                           f"is saved in {path}")
    return apply(keyset)


def report_applied(result: OrchestrationResult) -> int:
    """What ``--apply`` did on the Gatekeeper: the states that changed, or what failed."""
    for line in result.failed[:20]:
        print(f"  FAILED {line}")
    for minion, states in sorted(result.changed.items()):
        print(f"  {minion}: applied ({', '.join(states)})")
    if result.ok:
        print("applied: the Gatekeeper reloads its keys file (no restart)")
    return 0 if result.ok else 1
