"""`cdn demo` and `cdn bench`: a whole CDN on loopback under a realistic workload, and the offload report.

`cdn demo` runs every service in this one process on one event loop (so the
in-process purge log works without Redis; `--redis URL` uses Redis instead):
the origin mock placed far away by the latency model, with lagging read
replicas and event purges on every product change; the purge API; a shield
edge beside the origin; two edges in each of three regions, fetching their
misses through the shield; the front door. Then it drives the workload
(`cdn.workload`) through the front door and writes the report
(`cdn.report`): terminal, a self-contained HTML file and a PNG chart.

`cdn bench` drives the same workload against any running deployment.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from balancer.geo import REGIONS, great_circle_km, rtt_ms
from cdn.http_server import ClientLimits, protocol_class

TOKEN = "demo-token"
DEFAULT_REGIONS = ("eu-west", "us-east", "ap-northeast")
ORIGIN_REGION = "sa-east"  # far from every client: what the CDN saves is distance


def add_arguments(demo: argparse.ArgumentParser, bench: argparse.ArgumentParser) -> None:
    for parser in (demo, bench):
        parser.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (default: 60)")
        parser.add_argument("--rate", type=float, default=60.0, help="requests per second from ordinary clients (default: 60)")
        parser.add_argument("--products", type=int, default=1000, help="products in the catalog (default: 1000)")
        parser.add_argument("--assets", type=int, default=100, help="static assets per kind (default: 100)")
        parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of object popularity (default: 1.1)")
        parser.add_argument("--change-rate", type=float, default=0.2, help="product changes per second (default: 0.2)")
        parser.add_argument("--abusive", type=int, default=2, help="abusive clients at 30 requests/s, every other one cache-busting (default: 2)")
        parser.add_argument("--report-dir", default="reports", help="where the HTML report and PNG go (default: reports/)")
        parser.add_argument("--seed", type=int, default=1, help="random seed of the workload")
        parser.add_argument("--quiet", action="store_true", help="no live progress line")
    demo.add_argument("--regions", default=",".join(DEFAULT_REGIONS),
                      help=f"client and edge regions, comma-separated (default: {','.join(DEFAULT_REGIONS)}; "
                           f"known: {', '.join(sorted(REGIONS))})")
    demo.add_argument("--edges-per-region", type=int, default=2, help="edges in each region (default: 2)")
    demo.add_argument("--replica-lag-ms", type=float, default=200.0, help="origin read replicas' lag (default: 200)")
    demo.add_argument("--redis", default=None, help="use this Redis for the purge log and registry instead of the in-process log")
    bench.add_argument("--front-door", required=True, help="front door URL of the deployment")
    bench.add_argument("--origin", default=None, help="origin URL (its /_origin/stats measures offload; product changes go there)")
    bench.add_argument("--purge-api", default=None, help="purge API URL (acknowledgements, propagation, stale checks)")
    bench.add_argument("--token", default=None, help="purge API token")
    bench.add_argument("--regions", default=",".join(DEFAULT_REGIONS), help="client regions, comma-separated")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its caller (several share one loop)."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


@dataclass
class LocalCdn:
    """Every service of the demo, each on its own loopback port, all on this event loop."""

    regions: list[str]
    edges_per_region: int
    products: int
    assets: int
    replica_lag_ms: float
    redis: str | None = None
    urls: dict[str, str] = field(default_factory=dict)
    edges: list[Any] = field(default_factory=list)
    origin_app: Any = None
    _servers: list[tuple[QuietServer, asyncio.Task[None]]] = field(default_factory=list)

    def origin_distance_km(self) -> float:
        """The origin's distance as the edges see it: the mean over the edge regions."""
        origin = REGIONS[ORIGIN_REGION]
        return sum(great_circle_km(REGIONS[r], origin) for r in self.regions) / len(self.regions)

    def modelled_origin_ms(self) -> dict[str, float]:
        """Round trip client -> origin straight, from each client region (what no CDN would cost)."""
        return {r: round(rtt_ms(REGIONS[r], REGIONS[ORIGIN_REGION]), 1) for r in self.regions}

    async def serve(self, name: str, app: Any, proxy: bool = False) -> str:
        port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", access_log=False, lifespan="on",
                                proxy_headers=False, http=protocol_class(ClientLimits()),
                                ws="none", date_header=not proxy, server_header=not proxy, timeout_keep_alive=75)
        server = QuietServer(config)
        task = asyncio.create_task(server.serve())
        self._servers.append((server, task))
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError(f"{name} did not start")
            await asyncio.sleep(0.01)
        url = f"http://127.0.0.1:{port}"
        self.urls[name] = url
        return url

    async def start(self) -> None:
        from balancer.router import create_app as create_router
        from balancer.router_settings import RouterSettings
        from edge.app import create_app as create_edge
        from edge.settings import EdgeSettings
        from origin_mock.app import create_app as create_origin
        from origin_mock.settings import OriginSettings
        from purge_api.app import create_app as create_purge_api
        from purge_api.log import MemoryPurgeLog
        from purge_api.settings import PurgeApiSettings

        log = None if self.redis else MemoryPurgeLog()
        api_port = free_port()
        api_url = f"http://127.0.0.1:{api_port}"
        self.origin_app = create_origin(OriginSettings(
            products=self.products, assets=self.assets, distance_km=self.origin_distance_km(), replicas=2,
            replication_lag_ms=self.replica_lag_ms, replication_jitter_ms=self.replica_lag_ms / 4,
            purge_api=api_url, purge_token=TOKEN))
        origin_url = await self.serve("origin", self.origin_app)
        api = create_purge_api(PurgeApiSettings(port=api_port, token=TOKEN, redis=self.redis, live_after=3), purge_log=log)
        config = uvicorn.Config(api, host="127.0.0.1", port=api_port, log_level="error", lifespan="on",
                                http=protocol_class(ClientLimits()), ws="none")
        server = QuietServer(config)
        self._servers.append((server, asyncio.create_task(server.serve())))
        while not server.started:
            await asyncio.sleep(0.01)
        self.urls["purge-api"] = api_url
        # A shield edge beside the origin: every regional edge fetches its misses there, so the origin
        # sees about one fetch per object for the whole fleet.
        here = REGIONS[ORIGIN_REGION]
        shield = create_edge(EdgeSettings(id=f"{ORIGIN_REGION}-shield", region=ORIGIN_REGION, latitude=here.latitude,
                                          longitude=here.longitude, origin=origin_url, redis=self.redis,
                                          admin_token=TOKEN, heartbeat_interval=0.5, access_log=False,
                                          shield={"trusted_proxies": ["127.0.0.1/32"]}), purge_log=log)
        shield_url = await self.serve(shield.id, shield, proxy=True)
        self.edges.append(shield)
        front_edges = []
        for region in self.regions:
            where = REGIONS[region]
            for i in range(1, self.edges_per_region + 1):
                edge = create_edge(EdgeSettings(
                    id=f"{region}-{i}", region=region, latitude=where.latitude, longitude=where.longitude,
                    origin=origin_url, parents=[shield_url], redis=self.redis, admin_token=TOKEN, heartbeat_interval=0.5,
                    access_log=False,
                    # Clients reach the edges through the front door, which says who they are.
                    shield={"trusted_proxies": ["127.0.0.1/32"]},
                ), purge_log=log)
                url = await self.serve(edge.id, edge, proxy=True)
                self.edges.append(edge)
                front_edges.append({"url": url, "id": edge.id, "region": region})
        router = create_router(RouterSettings(edges=front_edges, health_interval=0.5, admin_token=TOKEN), purge_log=log)
        await self.serve("front-door", router, proxy=True)

    async def stop(self) -> None:
        for server, _ in reversed(self._servers):
            server.should_exit = True
        for _, task in reversed(self._servers):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 10)
        self._servers.clear()

    def origin_requests_counted_by_edges(self) -> int:
        """What the edges say they asked the origin (to check against the origin's own count)."""
        return sum(edge.upstream.origin_requests if edge.upstream else 0 for edge in self.edges)


@contextlib.asynccontextmanager
async def running(cdn: LocalCdn) -> AsyncIterator[LocalCdn]:
    try:
        await cdn.start()
        yield cdn
    finally:
        await cdn.stop()


def progress_printer(quiet: bool) -> Any:
    def show(p: Any) -> None:
        if quiet:
            return
        hit = f"{p.hit_ratio * 100:5.1f}%" if p.hit_ratio is not None else "  -  "
        origin = f"{p.origin_rps:6.1f}/s" if p.origin_rps is not None else "   -   "
        line = (f"  {p.elapsed:5.0f} s  requests {p.requests:7d}  hit ratio {hit}  origin {origin}  "
                f"refused {p.refused:5d}  errors {p.errors:3d}  changes {p.changes:3d}")
        end = "\r" if sys.stdout.isatty() else "\n"
        print(line, end=end, flush=True)
    return show


def write_report(report: dict[str, Any], directory: str) -> tuple[Path, Path]:
    from cdn.report import render_html, render_png

    out = Path(directory) / time.strftime("demo-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    png = out / "offload.png"
    render_png(report, str(png))
    html = out / "report.html"
    html.write_text(render_html(report, png.name))
    return html, png


def workload_config(args: argparse.Namespace, regions: list[str]) -> Any:
    from cdn.workload import AbusiveClient, WorkloadConfig

    abusive = [AbusiveClient(30.0, cache_busting=(i % 2 == 1)) for i in range(args.abusive)]
    shares = {r: 1.0 / len(regions) for r in regions}
    return WorkloadConfig(duration=args.duration, rate=args.rate, regions=shares, products=args.products,
                          assets=args.assets, zipf_s=args.zipf, change_rate=args.change_rate, abusive=abusive,
                          seed=args.seed)


async def demo(args: argparse.Namespace) -> int:
    from cdn.report import render_terminal
    from cdn.workload import Workload

    regions = [r.strip() for r in args.regions.split(",") if r.strip()]
    unknown = [r for r in regions if r not in REGIONS]
    if unknown or not regions:
        print(f"cdn demo: unknown region {unknown[0] if unknown else '(none)'}; known: {', '.join(sorted(REGIONS))}",
              file=sys.stderr)
        return 2
    started = time.monotonic()
    cdn = LocalCdn(regions, args.edges_per_region, args.products, args.assets, args.replica_lag_ms, args.redis)
    async with running(cdn):
        print(f"started in {time.monotonic() - started:.1f} s: origin in {ORIGIN_REGION} "
              f"({cdn.origin_distance_km():,.0f} km away), {len(cdn.edges)} edges in {', '.join(regions)}")
        for name, url in cdn.urls.items():
            print(f"  {name:<16} {url}")
        print(f"running the workload for {args.duration:.0f} s (Ctrl-C stops early) ...")
        workload = Workload(workload_config(args, regions), front_door=cdn.urls["front-door"], origin=cdn.urls["origin"],
                            purge_api=cdn.urls["purge-api"], purge_token=TOKEN, progress=progress_printer(args.quiet))
        trace = await workload.run()
        report = trace.to_report(modelled_origin_ms=cdn.modelled_origin_ms())
        stats = cdn.origin_app.state.stats.snapshot()
        report["origin"]["counted_by_edges"] = cdn.origin_requests_counted_by_edges()
        report["origin"]["counted_by_origin"] = stats["total"] - report["origin"].get("changes", 0)
    print()
    print(render_terminal(report))
    check = report["origin"]
    print(f"origin requests counted by the edges: {check['counted_by_edges']}, by the origin itself: "
          f"{check['counted_by_origin']}")
    html, png = write_report(report, args.report_dir)
    print(f"report: {html}  chart: {png}")
    return 0


async def bench(args: argparse.Namespace) -> int:
    from cdn.report import render_terminal
    from cdn.workload import Workload

    regions = [r.strip() for r in args.regions.split(",") if r.strip()]
    workload = Workload(workload_config(args, regions), front_door=args.front_door, origin=args.origin,
                        purge_api=args.purge_api, purge_token=args.token, progress=progress_printer(args.quiet))
    trace = await workload.run()
    modelled = {r: round(rtt_ms(REGIONS[r], REGIONS[ORIGIN_REGION]), 1) for r in regions if r in REGIONS}
    report = trace.to_report(modelled_origin_ms=modelled)
    print()
    print(render_terminal(report))
    html, png = write_report(report, args.report_dir)
    print(f"report: {html}  chart: {png}")
    return 0


def run(coroutine_factory: Any, args: argparse.Namespace) -> int:
    """Run until done or Ctrl-C / SIGTERM; every server is stopped either way."""
    loop = asyncio.new_event_loop()
    task = loop.create_task(coroutine_factory(args))
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return loop.run_until_complete(task)
    except asyncio.CancelledError:
        print("\nstopped.")
        return 130
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def run_demo(args: argparse.Namespace) -> int:
    return run(demo, args)


def run_bench(args: argparse.Namespace) -> int:
    return run(bench, args)

