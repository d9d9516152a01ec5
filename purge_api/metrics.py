"""The purge service's Prometheus metrics, served at `GET /metrics` (one registry per app, never the global one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cdn.worker_metrics import Worker, WorkerSnapshots, labelled, scrape

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class PurgeApiMetrics:
    """Purges logged, status reads, waits for edges, and every answer by status. As one of several workers
    (`worker`), every series also has a `worker` label, and a scrape shows every worker's (`cdn.worker_metrics`)."""

    def __init__(self, worker: Worker | None = None) -> None:
        self.worker = worker
        self.snapshots = WorkerSnapshots(worker.folder, f"purge-api-{worker.number}") if worker else None
        self.registry = CollectorRegistry()
        self.logged = Counter("cdn_purge_api_purges_logged_total", "Purges written to the purge log, by kind as requested",
                              ["kind", "soft"], registry=self.registry)
        self.replayed = Counter("cdn_purge_api_purges_replayed_total",
                                "Purge requests answered with an earlier purge (same Idempotency-Key)", registry=self.registry)
        self.status_reads = Counter("cdn_purge_api_status_requests_total", "GET /purges/{id} answers, by what they said",
                                    ["outcome"], registry=self.registry)
        self.waits = Histogram("cdn_purge_api_wait_seconds", "Seconds a ?wait= request waited for every live edge to apply a purge",
                               ["outcome"], registry=self.registry, buckets=WAIT_BUCKETS)
        self.responses = Counter("cdn_purge_api_responses_total",
                                 "Answers by method and status (503: the purge log could not be reached)",
                                 ["method", "status"], registry=self.registry)

    def render(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return scrape(self.render_own(), self.snapshots)

    def render_own(self) -> bytes:
        own = generate_latest(self.registry)
        return own if self.worker is None else labelled(own, "worker", str(self.worker.number))


class CountResponses:
    """ASGI middleware: count every answer in `cdn_purge_api_responses_total`."""

    def __init__(self, app: ASGIApp, metrics: PurgeApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Known methods only: a label per made-up method would grow without bound.
        method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"

        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.responses.labels(method, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting)
