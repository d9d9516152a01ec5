"""Stale responses after a purge, by replica lag: no protection vs version fence vs delayed second purge.

For each replica lag (0, 100, 300, 1000 ms) and each protection, an origin
mock with two lagging read replicas, the purge API and two edges run in this
process; a product is changed several times (the origin sends the purge), and
after each purge is acknowledged by every edge (for the delayed purge: after
its second pass) readers keep reading the product through both edges. A
response older than the acknowledged version is stale. The comparison is the
unprotected run, in the same table.

    .venv/bin/python benchmarks/fence_bench.py [--changes 5] [--read-seconds 0.6]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
import uvicorn

from cdn.demo import QuietServer, free_port
from edge.app import create_app as create_edge
from edge.settings import EdgeSettings
from origin_mock.app import create_app as create_origin
from origin_mock.settings import OriginSettings
from purge_api.app import create_app as create_purge_api
from purge_api.log import MemoryPurgeLog
from purge_api.settings import PurgeApiSettings

TOKEN = "bench"
LAGS_MS = (0, 100, 300, 1000)
MODES = ("none", "fence", "repurge")


@contextlib.asynccontextmanager
async def serving(apps: list[tuple[object, int, bool]]) -> AsyncIterator[None]:
    servers = []
    for app, port, proxy in apps:
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on",
                                date_header=not proxy, server_header=not proxy)
        server = QuietServer(config)
        servers.append((server, asyncio.create_task(server.serve())))
        while not server.started:
            await asyncio.sleep(0.01)
    try:
        yield
    finally:
        for server, _ in servers:
            server.should_exit = True
        for _, task in servers:
            await task


async def scenario(lag_ms: float, mode: str, changes: int, read_seconds: float) -> tuple[int, int]:
    """(stale responses, responses read after acknowledged purges)."""
    log = MemoryPurgeLog()
    origin_port, api_port, edge_ports = free_port(), free_port(), [free_port(), free_port()]
    origin = create_origin(OriginSettings(products=10, product_max_age=600, replicas=2, replication_lag_ms=lag_ms,
                                          purge_api=f"http://127.0.0.1:{api_port}", purge_token=TOKEN,
                                          purge_version_fence=(mode == "fence")))
    repurge = lag_ms / 1000 + 0.1 if mode == "repurge" else 0.0
    api = create_purge_api(PurgeApiSettings(token=TOKEN, repurge_delay=repurge), purge_log=log)
    edges = [create_edge(EdgeSettings(origin=f"http://127.0.0.1:{origin_port}", id=f"edge-{i}", heartbeat_interval=0.1,
                                      shield={"rules": []}, access_log=False), purge_log=log) for i in range(2)]
    apps = [(origin, origin_port, False), (api, api_port, False)] + [(e, p, True) for e, p in zip(edges, edge_ports)]
    stale = total = 0
    async with serving(apps), httpx.AsyncClient(timeout=15) as client:
        await asyncio.sleep(0.3)
        for _ in range(changes):
            changed = await client.patch(f"http://127.0.0.1:{origin_port}/api/products/3", json={"price": 1.0})
            version = int(changed.headers["x-content-version"])
            status = (await client.get(f"http://127.0.0.1:{api_port}/purges/{changed.headers['x-purge-id']}",
                                       params={"wait": "10"}, headers={"Authorization": f"Bearer {TOKEN}"})).json()
            deadline = time.monotonic() + read_seconds
            while time.monotonic() < deadline:
                for port in edge_ports:
                    response = await client.get(f"http://127.0.0.1:{port}/api/products/3", headers={"Host": "shop"})
                    if response.status_code == 200:
                        total += 1
                        stale += int(response.headers["x-content-version"]) < version
            assert status["complete"], status
    return stale, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=5)
    parser.add_argument("--read-seconds", type=float, default=0.6)
    args = parser.parse_args()
    print(f"stale responses after acknowledged purges ({args.changes} changes, reads for {args.read_seconds} s after "
          f"each purge is acknowledged by both edges; for the delayed purge, after its second pass)")
    print(f"{'replica lag':>12}  {'no protection':>16}  {'version fence':>16}  {'delayed re-purge':>17}")
    for lag in LAGS_MS:
        cells = []
        for mode in MODES:
            stale, total = asyncio.run(scenario(lag, mode, args.changes, args.read_seconds))
            cells.append(f"{stale}/{total}")
        print(f"{lag:>9} ms  {cells[0]:>16}  {cells[1]:>16}  {cells[2]:>17}")


if __name__ == "__main__":
    main()
