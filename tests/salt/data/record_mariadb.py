"""Re-record the MariaDB outputs of this directory from a real loopback replica (as root or
not): ``.venv/bin/python -m tests.salt.data.record_mariadb``. The MySQL 8.0 one is a published
recording (a MySQL 8.0 replica's ``SHOW REPLICA STATUS \\G`` of the mysql client)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from cluster.loopback.mariadb import MariaDBCluster

HERE = Path(__file__).parent


def status(socket: Path) -> str:
    return subprocess.run(["mariadb", f"--socket={socket}", "--batch", "--vertical"],
                          input="SHOW REPLICA STATUS", capture_output=True, text=True,
                          check=True).stdout


def main() -> None:
    cluster = MariaDBCluster(replicas=1)
    cluster.start()
    try:
        replica = cluster.replicas[0]
        (HERE / "mariadb-10.11-primary.txt").write_text(status(cluster.primary.socket))
        (HERE / "mariadb-10.11-running.txt").write_text(status(replica.socket))
        replica.sql("STOP REPLICA")
        (HERE / "mariadb-10.11-stopped.txt").write_text(status(replica.socket))
        replica.sql("START REPLICA")
        cluster.primary.stop()
        time.sleep(3)  # the IO thread notices, and keeps retrying
        (HERE / "mariadb-10.11-connecting.txt").write_text(status(replica.socket))
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
