"""Which DB nodes the sysbench baseline runs on, and how it reaches each one's local server.

sysbench runs on each node against its local server as ``sb@localhost``, over the server's
socket, so the figure is the server's and not the network's: on the loopback stack with each
node's socket, on the namespace and AWS clusters on each minion through Salt (or inside the
host's network namespace).
"""

from __future__ import annotations

import os
import shlex

from cluster.loopback.mariadb import MariaDBCluster
from loadtest.sysbench import InNamespace, Node, Options, Runner, ThroughSalt, run_here
from loadtest.target import Target

SB_PASSWORD_ENV = "SQLGATE_SB_PASSWORD"
SALT_COMMAND_ENV = "SQLGATE_SALT_COMMAND"
DEFAULT_SOCKET = "/run/mysqld/mysqld.sock"


def loopback_nodes(db: MariaDBCluster, options: Options) -> tuple[list[Node], Runner]:
    """Create ``sb@localhost`` on the primary (it replicates), then each node by its socket."""
    password = options.password.replace("'", "''")
    db.primary.sql(f"CREATE USER IF NOT EXISTS '{options.user}'@'localhost' "
                   f"IDENTIFIED BY '{password}'")
    # The stack makes `sb` as the Salt states do; the run's password is the one that counts.
    db.primary.sql(f"ALTER USER '{options.user}'@'localhost' IDENTIFIED BY '{password}'")
    db.primary.sql(f"GRANT ALL ON {options.schema}.* TO '{options.user}'@'localhost'")
    db.wait_for_replicas()
    nodes = [Node(node.name, "primary" if node is db.primary else "replica",
                  socket=str(node.socket)) for node in db.nodes]
    return nodes, run_here


def cluster_nodes(target: Target, via: str = "salt",
                  socket: str = DEFAULT_SOCKET) -> tuple[list[Node], Runner]:
    """The cluster file's DB hosts, reached through Salt (``via="salt"``) or their namespace."""
    nodes = [Node(h.name, h.role, socket=socket) for h in target.db_hosts]
    if not nodes:
        raise LookupError(f"the {target.provider} cluster file lists no DB hosts")
    if via == "netns":
        missing = [h.name for h in target.db_hosts if not h.namespace]
        if missing:
            raise LookupError(f"no network namespace for {missing} in the cluster file")
        return nodes, InNamespace({h.name: h.namespace for h in target.db_hosts})
    given = os.environ.get(SALT_COMMAND_ENV)
    salt = shlex.split(given) if given else list(target.salt_command) or ["salt"]
    return nodes, ThroughSalt(salt)


def sb_password(target: Target | None, given: str | None) -> str:
    """``--sb-password``, else ``$SQLGATE_SB_PASSWORD``, else the cluster file's ``sb_password``."""
    password = given or os.environ.get(SB_PASSWORD_ENV)
    if not password and target is not None:
        password = target.sb_password
    if not password:
        raise LookupError(f"no password for the sysbench user: give --sb-password or "
                          f"${SB_PASSWORD_ENV}")
    return password
