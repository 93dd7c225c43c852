"""``python -m cluster.demo [--provider local]``: show a running cluster at work.

Reads the Gatekeeper URL, its CA and the key from the cluster file that ``up`` wrote, then
sends through the Gatekeeper, over HTTPS checked against that CA: a read in every routing mode
(and which node answered), a write with parameters, the row read at once with its
read-your-writes token, then from each replica, a transfer in a transaction, a session
statement refused, and a request without the key.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid

from cluster.record import read_record
from services.client import Client, TlsFiles
from services.contract import MODES

SCHEMA_TABLE = "sakila.sqlgate_demo_accounts"


def client_tls(url: str, ca_file: str | None) -> TlsFiles | None:
    """How to check an https:// Gatekeeper: the cluster CA (None: the system's CAs)."""
    return TlsFiles(ca_file=ca_file or "") if url.startswith("https://") else None


def post(url: str, key: str | None, sql: str, mode: str, path: str = "/query",
         ca_file: str | None = None, **fields) -> tuple[int, dict]:
    body = {"sql": sql, "mode": mode, **fields} if sql else fields
    with Client(url, key or "", timeout=15, tls=client_tls(url, ca_file)) as client:
        answer = client.post(path, body)
    return answer.status, answer.json


def show(step: str, status: int, body: dict) -> None:
    where = f"node={body['node']} ({body['node_role']})" if "node_role" in body else ""
    result = body.get("rows", body.get("status", body.get("error")))
    print(f"  {step:<44} {status}  {where:<28} {json.dumps(result)[:60]}")


def demo(url: str, key: str, replicas: int, ca_file: str | None = None) -> bool:
    """``replicas``: how many replicas must answer the written row back; ``ca_file``: the
    cluster CA the Gatekeeper's certificate is checked with."""
    ok = True

    def step(name: str, sql: str, mode: str, expect: int = 200, api_key: str | None = key,
             **fields):
        nonlocal ok
        status, body = post(url, api_key, sql, mode, ca_file=ca_file, **fields)
        show(name, status, body)
        ok = ok and status == expect
        return body

    print(f"Gatekeeper {url}")
    for mode in MODES:
        step(f"SELECT COUNT(*) FROM sakila.actor  [{mode}]",
             "SELECT COUNT(*) FROM sakila.actor", mode)
    step("CREATE TABLE IF NOT EXISTS (demo table)",
         f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (id INT AUTO_INCREMENT PRIMARY KEY, "
         "note VARCHAR(64), balance DECIMAL(12,2) NOT NULL DEFAULT 0)", "direct")
    note = f"demo-{uuid.uuid4().hex[:8]}"
    written = step("INSERT a row with params  [random: primary]",
                   f"INSERT INTO {SCHEMA_TABLE} (note, balance) VALUES (?, 100)", "random",
                   params=[note])
    mine = step("read it at once, after its token  [least]",
                f"SELECT id, note FROM {SCHEMA_TABLE} WHERE note = :note", "least",
                params={"note": note}, after=written.get("token"))
    ok = ok and bool(mine.get("rows"))  # the token guarantees the write is seen
    seen: set[str] = set()
    deadline = time.monotonic() + 10
    while len(seen) < replicas and time.monotonic() < deadline:  # until each replica has it
        status, body = post(url, key, f"SELECT id, note FROM {SCHEMA_TABLE} WHERE note = :note",
                            "random", ca_file=ca_file, params={"note": note})
        if status == 200 and body["rows"] and body["node_role"] == "replica":
            if body["node"] not in seen:
                show("read it back  [random]", status, body)
            seen.add(body["node"])
        else:
            time.sleep(0.05)  # not replicated yet: ask again shortly
    ok = ok and bool(written.get("last_insert_id")) and len(seen) >= replicas
    ok = transfer(url, key, written.get("last_insert_id"), ca_file) and ok
    step("SET autocommit = 0  [refused: session state]", "SET autocommit = 0", "direct",
         expect=400)
    step("a request without X-API-Key", "SELECT 1", "direct", expect=401, api_key=None)
    print("the cluster works" if ok else "SOMETHING IS WRONG: see above")
    return ok


def transfer(url: str, key: str, account: int | None, ca_file: str | None = None) -> bool:
    """Move 25.50 out of ``account`` in a transaction, then read the balance back."""
    status, opened = post(url, key, "", "", path="/transactions", ca_file=ca_file)
    show("POST /transactions", status, {"rows": opened.get("transaction_id",
                                                            opened.get("error"))})
    if status != 201 or account is None:
        return False
    tx = opened["transaction_id"]
    status, moved = post(url, key, f"UPDATE {SCHEMA_TABLE} SET balance = balance - ? "
                         "WHERE id = ?", "direct", ca_file=ca_file,
                         params=[{"type": "decimal", "value": "25.50"}, account],
                         transaction_id=tx)
    show("  debit 25.50 inside it", status, moved)
    status, ended = post(url, key, "", "", path=f"/transactions/{tx}/commit", ca_file=ca_file)
    show("  commit", status, ended)
    status, after = post(url, key, f"SELECT balance FROM {SCHEMA_TABLE} WHERE id = ?",
                         "direct", ca_file=ca_file, params=[account])
    show("  balance after the commit", status, after)
    return status == 200 and after["rows"] == [["74.50"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--provider", default="local")
    args = parser.parse_args()
    cluster = read_record(args.provider)
    if cluster is None or not cluster.gatekeeper_url:
        print(f"demo: no {args.provider} cluster: run `python bootstrap.py up --provider "
              f"{args.provider}` first", file=sys.stderr)
        return 2
    replicas = sum(1 for host in cluster.hosts if host.role == "replica")
    return 0 if demo(cluster.gatekeeper_url.rstrip("/"), cluster.api_key, replicas,
                     cluster.ca_file) else 1


if __name__ == "__main__":
    sys.exit(main())
