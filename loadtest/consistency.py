"""``python -m loadtest.consistency``: does a client read its own writes?

Write-then-read pairs through the Gatekeeper: each pair inserts a row, then reads it back by
its id in a replica mode, with the write's token in ``after`` (or without, to see what the
token buys). A read that does not find the row it follows is *stale*. The Proxy promises 0
stale reads with the token; without it, the count depends on how far the replicas lag.

    python -m loadtest.consistency                 # 1,000 pairs with, then without, the token
    python -m loadtest.consistency --pairs 200 --mode least --provider loopback
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from loadtest.target import PREFERRED_PROVIDERS, find_target, gatekeeper_tls
from loadtest.workload import DEFAULT_TABLE, create_table_sql, new_run_id, write_statement
from services.client import Client


@dataclass
class PairsResult:
    mode: str
    with_token: bool
    pairs: int = 0
    stale: int = 0
    failed: int = 0
    waited: int = 0  # reads that waited for their replica to catch up (over 1 ms)
    nodes: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    written: list[int] = field(default_factory=list)  # ids of the acknowledged writes
    seconds: float = 0.0

    def line(self) -> str:
        token = "with token   " if self.with_token else "without token"
        nodes = " ".join(f"{name}:{count}" for name, count in sorted(self.nodes.items()))
        return (f"{self.mode:<7} {token} {self.pairs:>6} pairs  {self.stale:>5} stale  "
                f"{self.waited:>5} waited  {self.failed:>3} failed  {self.seconds:6.1f} s  "
                f"reads on {nodes}")


def run_pairs(client: Client, pairs: int, mode: str = "random", with_token: bool = True,
              table: str = DEFAULT_TABLE) -> PairsResult:
    """``pairs`` write-then-read pairs, one after the other, on ``client``."""
    result = PairsResult(mode, with_token)
    run_id = new_run_id()
    began = time.perf_counter()
    for seq in range(pairs):
        statement = write_statement(table, run_id, mode, seq)
        write = client.query(statement["sql"], statement["params"], mode=mode)
        if not write.ok or not write.json.get("last_insert_id"):
            result.failed += 1
            result.errors.append(f"write {seq}: {write.status} {write.json.get('error')}")
            continue
        result.written.append(write.json["last_insert_id"])
        fields = {"mode": mode}
        if with_token:
            fields["after"] = write.json["token"]
        read = client.query(f"SELECT id FROM {table} WHERE id = ?",
                            [write.json["last_insert_id"]], **fields)
        result.pairs += 1
        if not read.ok:
            result.failed += 1
            result.errors.append(f"read {seq}: {read.status} {read.json.get('error')}")
            continue
        result.nodes[read.json["node"]] += 1
        result.stale += read.json["rowcount"] == 0
        result.waited += (read.json.get("waited_ms") or 0.0) > 1.0
    result.seconds = time.perf_counter() - began
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.consistency",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--provider", choices=PREFERRED_PROVIDERS)
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--mode", default="random")
    parser.add_argument("--table", default=DEFAULT_TABLE)
    args = parser.parse_args(argv)
    try:
        target = find_target(args.provider)
    except LookupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with Client(target.gatekeeper_url, target.api_key, tls=gatekeeper_tls(target)) as client:
        created = client.query(create_table_sql(args.table))
        if not created.ok:
            print(f"error: cannot create {args.table}: {created.json.get('error')}",
                  file=sys.stderr)
            return 2
        results = [run_pairs(client, args.pairs, args.mode, with_token, args.table)
                   for with_token in (True, False)]
    for result in results:
        print(result.line())
        for error in result.errors[:5]:
            print(f"  {error}")
    with_token = results[0]
    return 1 if with_token.stale or any(result.failed for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
