"""``python -m cluster.loopback [--replicas N] [--port P]``: the stack on loopback until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import threading

from cluster.access import curl_line, key_from_json
from cluster.loopback import LoopbackStack
from cluster.record import remove_record, write_record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--port", type=int, default=8443, help="Gatekeeper port (HTTPS)")
    args = parser.parse_args()
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    with LoopbackStack(replicas=args.replicas, gatekeeper_port=args.port) as stack:
        path = write_record(stack.describe())
        print(f"Gatekeeper: {stack.gatekeeper.url}  (API key in {path}, CA {stack.ca_file})")
        print(f"  {curl_line(stack.gatekeeper.url, key_from_json(path), str(stack.ca_file))}")
        print("Ctrl-C stops everything.", flush=True)
        try:
            stopping.wait()
        finally:
            remove_record("loopback")


if __name__ == "__main__":
    main()
