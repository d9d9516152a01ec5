"""The origin mock's Prometheus metrics, served at `GET /_origin/metrics`: its request accounting, read at scrape time.

The counters are those of `/_origin/stats`, so a reset there (`POST /_origin/stats/reset`)
resets them too; Prometheus reads the drop as a counter reset.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from origin_mock.database import Replication
from origin_mock.stats import RequestStats


def route_of(path: str) -> str:
    """The shop route a path belongs to, as a label that does not grow with product ids or asset names."""
    if path == "/api/products" or path == "/api/cart":
        return path
    if path.startswith("/api/products/"):
        return "/api/products/{id}"
    if path.startswith("/static/"):
        return "/static/" + path.split("/")[2] if path.count("/") > 2 else "/static"
    return "other"


class OriginCollector(Collector):
    """Requests by route, method and status, bytes sent, faults injected, replica reads, requests in flight."""

    def __init__(self, stats: RequestStats, replication: Replication) -> None:
        self.stats = stats
        self.replication = replication

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        by_route: dict[str, int] = {}
        for path, n in stats.by_path.items():
            route = route_of(path)
            by_route[route] = by_route.get(route, 0) + n
        yield _family("cdn_origin_requests_total", "Shop requests by route", "route", by_route)
        yield _family("cdn_origin_requests_by_method_total", "Shop requests by method", "method", stats.by_method)
        yield _family("cdn_origin_responses_total", "Shop responses by status", "status",
                      {str(status): n for status, n in stats.by_status.items()})
        yield _family("cdn_origin_faults_total", "Faults injected, by kind", "kind", stats.faults)
        yield _family("cdn_origin_reads_total", "Product reads by the server that answered them", "served_from",
                      self.replication.reads)
        sent = CounterMetricFamily("cdn_origin_sent_bytes_total", "Response body bytes sent by the shop")
        sent.add_metric([], stats.bytes_sent)
        yield sent
        yield GaugeMetricFamily("cdn_origin_in_flight", "Shop requests being served", value=stats.in_flight)


def _family(name: str, help_text: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_text, labels=[label])
    for value, n in sorted(values.items()):
        family.add_metric([value], n)
    return family


def origin_registry(stats: RequestStats, replication: Replication) -> CollectorRegistry:
    """A registry of its own for one origin app (several may share a process)."""
    registry = CollectorRegistry()
    registry.register(OriginCollector(stats, replication))
    return registry
