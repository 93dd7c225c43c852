"""Load tests and the benchmark report: Locust scenarios, the latency table per mode, sysbench."""
