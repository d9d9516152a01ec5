"""The front door's Prometheus metrics, served at `GET /_router/metrics`: its plain counters and its edges' health, read
at scrape time (the request path only increments dict counters)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from balancer.router import FrontDoor

# Front door counter -> the `error` label of cdn_router_upstream_errors_total.
UPSTREAM_ERRORS = {"edge_connect_failed": "connect", "edge_error_502": "502", "edge_error_504": "504",
                   "edge_body_error": "body", "no_edge": "no-edge"}
REJECTIONS = {"bad_request": "bad-request", "loop_detected": "loop"}


class RouterCollector(Collector):
    """Requests by region and edge, upstream errors, and each edge's availability, in flight and response time."""

    def __init__(self, door: FrontDoor) -> None:
        self.door = door

    def collect(self) -> Iterator[Metric]:
        door = self.door
        c = door.counters
        received = CounterMetricFamily("cdn_router_requests_total", "Requests received (front door admin paths excluded)")
        received.add_metric([], c.get("requests", 0))
        yield received
        routed = CounterMetricFamily("cdn_router_routed_total", "Edge responses relayed to clients, by region and edge",
                                     labels=["region", "edge"])
        for (region, edge), n in sorted(door.routed.items()):
            routed.add_metric([region, edge], n)
        yield routed
        errors = CounterMetricFamily("cdn_router_upstream_errors_total",
                                     "Edges that failed a request (connect: then tried elsewhere), and 503s with no edge",
                                     labels=["error"])
        for name, error in UPSTREAM_ERRORS.items():
            errors.add_metric([error], c.get(name, 0))
        yield errors
        retried = CounterMetricFamily("cdn_router_retried_total", "Requests answered by another edge after a refused connection")
        retried.add_metric([], c.get("retried", 0))
        yield retried
        rejected = CounterMetricFamily("cdn_router_rejected_total", "Requests refused before routing", labels=["reason"])
        for name, reason in REJECTIONS.items():
            rejected.add_metric([reason], c.get(name, 0))
        yield rejected
        labels = ["region", "edge"]
        available = GaugeMetricFamily("cdn_router_edge_available", "1 when the edge may be picked (healthy, not ejected)",
                                      labels=labels)
        in_flight = GaugeMetricFamily("cdn_router_edge_in_flight", "Requests relayed to the edge not yet finished",
                                      labels=labels)
        response = GaugeMetricFamily("cdn_router_edge_response_seconds", "Moving average of the edge's time to response headers",
                                     labels=labels)
        fleet = door.fleet
        now = fleet.clock()
        for region, pool in sorted(fleet.pools.items()):
            for member in pool.members:
                edge = fleet.edges[member.url].id if member.url in fleet.edges else member.url
                available.add_metric([region, edge], 1 if member.available(now) else 0)
                in_flight.add_metric([region, edge], member.in_flight)
                if member.response_time is not None:
                    response.add_metric([region, edge], member.response_time)
        yield from (available, in_flight, response)
        everything = CounterMetricFamily("cdn_router_counters_total", "Every plain counter of the front door, by name",
                                         labels=["counter"])
        for name, n in sorted(c.items()):
            everything.add_metric([name], n)
        yield everything


def router_registry(door: FrontDoor) -> CollectorRegistry:
    """A registry of its own for one front door (several services may share a process)."""
    registry = CollectorRegistry()
    registry.register(RouterCollector(door))
    return registry
