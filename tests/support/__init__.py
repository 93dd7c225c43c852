"""Real parts for the tests: MariaDB servers with GTID replication, the services as processes."""
