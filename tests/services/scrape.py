"""Reading a service's ``/metrics`` and its JSON request log, for the metrics tests."""

from __future__ import annotations

import http.client
import json
import math
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from services.client import TlsFiles


class Samples(dict):
    """``{(sample name, frozenset of label items): value}`` of one scrape."""

    def value(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels; 0 when absent (a counter never touched)."""
        return self.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum over every sample of ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(value for (sample, items), value in self.items()
                   if sample == name and wanted <= items and not math.isnan(value))

    def labelled(self, name: str) -> list[dict[str, str]]:
        return [dict(items) for sample, items in self if sample == name]


def get(port: int, path: str = "/metrics", tls: TlsFiles | None = None,
        timeout: float = 10) -> tuple[int, str, str]:
    """(status, content type, body) of a GET on 127.0.0.1:port, HTTPS when ``tls``."""
    connection = (http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout,
                                              context=tls.context()) if tls
                  else http.client.HTTPConnection("127.0.0.1", port, timeout=timeout))
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.headers.get("Content-Type", ""), answer.read().decode()
    finally:
        connection.close()


def scrape(port: int, tls: TlsFiles | None = None) -> Samples:
    status, _, text = get(port, "/metrics", tls)
    assert status == 200, text[:500]
    return parse(text)


def parse(text: str) -> Samples:
    samples = Samples()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def request_lines(log_path: Path) -> list[dict[str, Any]]:
    """The JSON request lines of a service's log (its other lines are not JSON objects)."""
    lines = []
    for line in log_path.read_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines
