"""Metrics of a service run in several worker processes (`workers` > 1), served whole by whichever worker a scrape reaches.

Each worker leaves a snapshot of its own metrics in a folder the supervisor
makes (`worker_metrics_dir`) every SNAPSHOT_EVERY seconds; the worker scraped
serves its own, live, merged with the others' latest. A snapshot not renewed
for SNAPSHOT_STALE seconds is a dead worker's and is left out. An edge worker's
series carry its own `edge` label; series the workers share (the purge API's)
are added up, so a counter counts the whole service.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

SNAPSHOT_EVERY = 1.0  # seconds between a worker's snapshots of its metrics
SNAPSHOT_STALE = 5.0  # a snapshot not renewed for this long is a dead worker's: not served

log = logging.getLogger("cdn.metrics")


class WorkerSnapshots:
    """One worker's snapshot in the shared folder (`name`: the worker's, unique among them), and the others'."""

    def __init__(self, folder: str, name: str) -> None:
        self.folder = Path(folder)
        self.path = self.folder / f"{name}.prom"

    def write(self, text: bytes) -> None:
        """Replace this worker's snapshot at once: a reader sees the old one or the new one, whole."""
        partial = self.path.with_suffix(".partial")
        partial.write_bytes(text)
        partial.replace(self.path)

    def others(self) -> list[str]:
        """The other workers' snapshots renewed within SNAPSHOT_STALE seconds."""
        now = time.time()
        texts = []
        for path in self.folder.glob("*.prom"):
            if path == self.path:
                continue
            try:
                if now - path.stat().st_mtime <= SNAPSHOT_STALE:
                    texts.append(path.read_text())
            except OSError:  # replaced or removed since it was listed
                continue
        return texts

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    async def leave_forever(self, render_own: Callable[[], bytes]) -> None:
        """Write this worker's metrics every SNAPSHOT_EVERY seconds until cancelled; a failure is logged once a spell."""
        failing = False
        while True:
            try:
                self.write(render_own())
                failing = False
            except OSError as exc:
                if not failing:
                    log.warning("cannot leave this worker's metrics in %s: %s", self.folder, exc)
                failing = True
            await asyncio.sleep(SNAPSHOT_EVERY)


def scrape(own: bytes, snapshots: WorkerSnapshots | None) -> bytes:
    """A worker's `own` metrics, merged with its fellow workers' when it has any."""
    return own if snapshots is None else merged([own.decode(), *snapshots.others()])


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def merged(texts: list[str]) -> bytes:
    """Prometheus texts as one: one HELP and TYPE a family, every text's series, and a series several texts
    hold added up (a `_created` one: the earliest)."""
    families: dict[str, Metric] = {}
    series: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], Sample]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            families.setdefault(family.name, family)
            kept = series.setdefault(family.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                seen = kept.get(key)
                if seen is not None:
                    total = min(seen.value, sample.value) if sample.name.endswith("_created") else seen.value + sample.value
                    sample = seen._replace(value=total)
                kept[key] = sample
    for name, family in families.items():
        family.samples = list(series[name].values())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)
