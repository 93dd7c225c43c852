"""Load tests and the benchmark report: Locust scenarios, the seed's latency table, sysbench."""
