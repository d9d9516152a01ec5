"""The edge's Prometheus metrics, served at `GET /_edge/metrics`.

The hit path only increments plain counters (`Edge.counters`); they become
metric families when scraped, beside gauges read then from the store, the
upstream pools and the shield. The histograms are observed off the hit path:
upstream response times on misses, purge lag as purges are acknowledged, and
garbage collection pauses as Python's collector reports them.
Each edge has its own registry, so several edges (and other services) can run
in one process.
"""

from __future__ import annotations

import bisect
import gc
import itertools
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from balancer import OriginPool
from cdn.access_log import dropped_lines
from cdn.worker_metrics import WorkerSnapshots, scrape, this_worker
from purge_api.log import Ack, Purge, PurgeLog

if TYPE_CHECKING:
    from edge.app import Edge

LABELS = ("edge", "region")
# Counter names whose requests end as each `cache` outcome; every request counts as exactly one.
OUTCOMES: dict[str, tuple[str, ...]] = {
    "hit": ("hit",),
    "stale": ("stale_max_stale", "stale_while_revalidate", "stale_origin_budget"),
    "collapsed": ("coalesced_hit",),
    "miss": ("miss",),
    "revalidate": ("revalidate",),
    "pass": ("pass",),
    "error": ("bad_request", "loop_detected", "only_if_cached_miss"),
}
# The shield's refusal reasons (`Decision.reason`), counted as `shield_<reason>`; size limits by status.
REFUSALS = ("rate-limited", "banned", "over-budget", "fleet-unavailable")
SIZE_REFUSALS = {413: "body-too-large", 414: "url-too-long", 431: "headers-too-large"}
# Stale copies served, by why stale was allowed (the counters' names after `stale_`).
STALE_REASONS = {"max_stale": "max-stale", "while_revalidate": "stale-while-revalidate", "if_error": "stale-if-error",
                 "grace": "stale-grace", "origin_budget": "origin-budget"}
UPSTREAM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PURGE_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
GC_PAUSE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class EdgeMetrics:
    """One edge's registry: its histograms, and a collector that reads everything else at scrape time."""

    def __init__(self, edge: Edge) -> None:
        self.registry = CollectorRegistry()
        labels = (edge.id, edge.settings.region)
        upstream = Histogram("cdn_edge_upstream_response_seconds",
                             "Seconds from sending a request upstream to its response headers",
                             [*LABELS, "upstream"], registry=self.registry, buckets=UPSTREAM_BUCKETS)
        self._from_origin = upstream.labels(*labels, "origin")
        self._parents = frozenset(member.url for member in edge.settings.parents)
        self._from_parent = upstream.labels(*labels, "parent") if self._parents else self._from_origin
        self.purge_lag = Histogram("cdn_edge_purge_lag_seconds", "Seconds from a purge's creation to its application here",
                                   LABELS, registry=self.registry, buckets=PURGE_LAG_BUCKETS).labels(*labels)
        self.gc_pauses = GcPauses(labels)
        self.registry.register(self.gc_pauses)
        self.registry.register(EdgeCollector(edge))
        worker = this_worker()  # one of several worker processes: their metrics are served together
        self.snapshots = WorkerSnapshots(worker.folder, edge.id) if worker else None

    def upstream_answered(self, served_by: str, seconds: float) -> None:
        """Observe the time to response headers of a request to `served_by` (a parent's or an origin's URL)."""
        (self._from_parent if served_by in self._parents else self._from_origin).observe(seconds)

    def render(self) -> bytes:
        """Every metric in the Prometheus text format: this edge's, and its fellow workers' (`cdn.worker_metrics`)."""
        return scrape(self.render_own(), self.snapshots)

    def render_own(self) -> bytes:
        return generate_latest(self.registry)


class GcPauses(Collector):
    """How long each of Python's garbage collections holds the process, by generation, while watching
    (`gc.callbacks`). Every request waits for one: a full collection (generation 2) walks the store's
    indexes, so it grows with the cache (about 25 ms at 100,000 entries on the project's machine).

    A collection may start in any thread, at any allocation, a scrape's included: the callback takes no
    lock (prometheus_client's Histogram takes one it cannot take twice), it only adds to plain counts,
    which become a histogram family when scraped.
    """

    def __init__(self, labels: tuple[str, str]) -> None:
        self._labels = labels
        self._counts = [[0] * (len(GC_PAUSE_BUCKETS) + 1) for _ in range(3)]  # per generation, per bucket, +Inf
        self._sums = [0.0] * 3
        self._started: float | None = None

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:  # not a stop whose start came before we watched
            seconds = time.perf_counter() - self._started
            self._started = None
            generation = info["generation"]
            self._sums[generation] += seconds
            self._counts[generation][bisect.bisect_left(GC_PAUSE_BUCKETS, seconds)] += 1

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily("cdn_edge_gc_pause_seconds", "Seconds each garbage collection held the process",
                                       labels=[*LABELS, "generation"])
        for generation, counts in enumerate(self._counts):
            cumulative = list(itertools.accumulate(counts))
            buckets = [(f"{bound:g}", n) for bound, n in zip(GC_PAUSE_BUCKETS, cumulative)] + [("+Inf", cumulative[-1])]
            family.add_metric([*self._labels, str(generation)], buckets, self._sums[generation])
        yield family

    def watch(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def stop(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)


class TimedAcks:
    """The purge log as the edge's listener sees it: each acknowledgement also observes its purges' lag.

    The listener acknowledges a purge only once it took effect, at the time the purge
    API reports as `applied.at`, so the lag measured here is the one it shows per edge.
    """

    def __init__(self, log: PurgeLog, lag: Histogram) -> None:
        self._log = log
        self._lag = lag
        self._observed: Ack | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)

    def _observe(self, purges: list[tuple[str, Purge]], at: float) -> None:
        for _, purge in purges:
            self._lag.observe(max(0.0, at - purge.created_at))

    async def ack(self, edge_id: str, purges: list[tuple[str, Purge]], at: float) -> None:
        self._observe(purges, at)
        await self._log.ack(edge_id, purges, at)

    async def read(self, position: str, block: float, count: int = 512,
                   ack: Ack | None = None) -> list[tuple[str, Purge]]:
        if ack is not None and ack is not self._observed:  # once, though a failed read is retried with it
            self._observe(ack[1], ack[2])
            self._observed = ack
        return await self._log.read(position, block, count, ack)


class EdgeCollector(Collector):
    """Builds the edge's counter and gauge families from its live state when scraped."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge

    def collect(self) -> Iterator[Metric]:
        edge = self.edge
        c = edge.counters
        base = [edge.id, edge.settings.region]

        def counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, help_text, labels=LABELS)
            family.add_metric(base, value)
            return family

        def gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, help_text, labels=LABELS)
            family.add_metric(base, value)
            return family

        shield = edge.shield
        refused = {reason: c.get(f"shield_{reason}", 0) for reason in REFUSALS}
        refused |= {reason: shield.size_refusals.get(status, 0) for status, reason in SIZE_REFUSALS.items()}
        requests = CounterMetricFamily("cdn_edge_requests_total", "Requests by how the edge answered them (cache outcome)",
                                       labels=[*LABELS, "cache"])
        for outcome, names in OUTCOMES.items():
            requests.add_metric([*base, outcome], sum(c.get(n, 0) for n in names))
        requests.add_metric([*base, "refused"], sum(refused.values()))
        yield requests
        refusals = CounterMetricFamily("cdn_edge_refused_total", "Requests refused by the shield, by reason",
                                       labels=[*LABELS, "reason"])
        for reason, n in refused.items():
            refusals.add_metric([*base, reason], n)
        yield refusals
        stale = CounterMetricFamily("cdn_edge_stale_served_total", "Stale copies served, by why stale was allowed",
                                    labels=[*LABELS, "reason"])
        for name, reason in STALE_REASONS.items():
            stale.add_metric([*base, reason], c.get(f"stale_{name}", 0))
        yield stale
        served = CounterMetricFamily("cdn_edge_served_bytes_total", "Response body bytes sent to clients, by source",
                                     labels=[*LABELS, "source"])
        served.add_metric([*base, "cache"], c.get("served_bytes_cache", 0))
        served.add_metric([*base, "upstream"], c.get("served_bytes_upstream", 0))
        yield served
        yield counter("cdn_edge_upstream_bytes_total", "Response body bytes read from parents and origins",
                      c.get("upstream_bytes", 0))
        errors = CounterMetricFamily("cdn_edge_upstream_errors_total",
                                     "Requests answered with an error because upstream gave no usable response",
                                     labels=[*LABELS, "status"])
        for name, n in c.items():
            if name.startswith("origin_error_"):
                errors.add_metric([*base, name.removeprefix("origin_error_")], n)
        yield errors
        yield counter("cdn_edge_upstream_body_errors_total", "Upstream response bodies cut off or unreadable",
                      c.get("origin_body_error", 0))
        yield counter("cdn_edge_coalesced_waits_total", "Requests that waited for another request's fetch of their key",
                      c.get("coalesced_wait", 0))
        yield counter("cdn_edge_coalesced_hits_total", "Waiting requests answered from what that fetch stored",
                      c.get("coalesced_hit", 0))
        yield counter("cdn_edge_coalesce_timeouts_total", "Waiting requests that gave up and fetched themselves",
                      c.get("coalesce_timeout", 0))
        yield counter("cdn_edge_purges_applied_total", "Purges from the purge log applied to the store",
                      c.get("purges_applied", 0))
        yield counter("cdn_edge_purged_objects_total", "Stored entries removed or marked stale by purges from the log",
                      c.get("purged_objects", 0))
        yield counter("cdn_edge_purge_log_flushes_total", "Times the cache was emptied because purges may have been missed",
                      c.get("purge_log_flush", 0))
        decisions = CounterMetricFamily("cdn_edge_shield_decisions_total", "Shield rate limit decisions by rule and outcome",
                                        labels=[*LABELS, "rule", "outcome"])
        for rule, outcomes in shield.outcomes.items():
            for outcome, n in outcomes.items():
                decisions.add_metric([*base, rule, outcome], n)
        yield decisions
        store = edge.store
        yield gauge("cdn_edge_store_objects", "Entries in the store", len(store))
        yield gauge("cdn_edge_store_bytes", "Bytes accounted to stored entries", store.size)
        yield gauge("cdn_edge_store_capacity_bytes", "Store capacity in bytes", store.capacity)
        yield gauge("cdn_edge_store_tags", "Surrogate keys (tags) indexed", store.tag_count())
        yield counter("cdn_edge_store_evictions_total", "Entries evicted to make room", store.evictions)
        yield gauge("cdn_edge_in_flight", "Client requests being answered", edge.in_flight)
        yield from pool_families(edge, base)
        if edge.access_log is not None:
            dropped = CounterMetricFamily("cdn_access_log_dropped_total",
                                          "Access log lines this process dropped because stdout could not keep up",
                                          labels=LABELS)
            dropped.add_metric(base, dropped_lines())
            yield dropped
        everything = CounterMetricFamily("cdn_edge_counters_total", "Every plain counter of the edge, by name (as in /_edge/stats)",
                                         labels=[*LABELS, "counter"])
        for name, n in sorted(c.items()):
            everything.add_metric([*base, name], n)
        yield everything


def pool_families(edge: Edge, base: list[str]) -> Iterator[Metric]:
    """Per member of the origin pool and the parent pool: available (healthy, not ejected), in flight, response time."""
    labels = [*LABELS, "pool", "member"]
    available = GaugeMetricFamily("cdn_edge_pool_member_available", "1 when the member may be picked (healthy, not ejected)",
                                  labels=labels)
    in_flight = GaugeMetricFamily("cdn_edge_pool_member_in_flight", "Requests to the member not yet finished", labels=labels)
    response = GaugeMetricFamily("cdn_edge_pool_member_response_seconds",
                                 "Moving average of the member's time to response headers", labels=labels)
    pools: list[tuple[str, OriginPool]] = []
    if edge.upstream is not None:
        pools.append(("origin", edge.upstream.origins))
        if edge.upstream.parents is not None:
            pools.append(("parent", edge.upstream.parents))
    for name, pool in pools:
        now = pool.clock()
        for member in pool.members:
            values = [*base, name, member.url]
            available.add_metric(values, 1 if member.available(now) else 0)
            in_flight.add_metric(values, member.in_flight)
            if member.response_time is not None:
                response.add_metric(values, member.response_time)
    yield from (available, in_flight, response)
