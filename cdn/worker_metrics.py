"""Metrics of a service run in several worker processes (`workers` > 1), served whole by whichever worker a scrape reaches.

The supervisor makes a folder and tells each worker, in its own process, which
worker it is (`become_worker`) before the worker builds its app. Each worker
leaves a snapshot of its own metrics there every SNAPSHOT_EVERY seconds; the
worker scraped serves its own, live, with the others' latest. A snapshot not
renewed for SNAPSHOT_STALE seconds is a dead worker's and is left out. Every
worker's series are its own, never added up: an edge worker's carry its own
`edge` label, and the other services' a `worker` label (its number), so a
worker that restarts resets only its own counters, which Prometheus's `rate()`
handles, and the whole service is a `sum` in PromQL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

SNAPSHOT_EVERY = 1.0  # seconds between a worker's snapshots of its metrics
SNAPSHOT_STALE = 5.0  # a snapshot not renewed for this long is a dead worker's: not served
FOLDER_ABANDONED = 60.0  # seconds untouched after which a dead supervisor's folder is removed (`make_folder`)

log = logging.getLogger("cdn.metrics")


def make_folder(service: str) -> str:
    """A new folder for the workers of `service`, named after this supervisor. Folders that supervisors no longer
    running left (one killed with SIGKILL cannot remove its own) are removed first, once nothing in them has
    changed for FOLDER_ABANDONED seconds: the workers of a supervisor whose process id means nothing here (in
    another PID namespace sharing /tmp) renew their snapshots every second, which keeps its folder."""
    prefix = f"cdn-{service}-workers-"
    now = time.time()
    for folder in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        pid = folder.name.removeprefix(prefix).partition("-")[0]
        try:
            if (pid.isdigit() and not _running(int(pid))
                    and all(now - path.stat().st_mtime > FOLDER_ABANDONED for path in [folder, *folder.iterdir()])):
                shutil.rmtree(folder)
        except OSError:  # gone meanwhile, or another user's
            continue
    return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


@dataclass(frozen=True)
class Worker:
    """This process, when it is one of a service's workers: the folder they share, and its number."""

    folder: str
    number: int


_this_worker: Worker | None = None


def become_worker(folder: str, number: int) -> None:
    """Called by the supervisor in a worker's own process, before the worker builds its app."""
    global _this_worker
    _this_worker = Worker(folder, number)


def this_worker() -> Worker | None:
    return _this_worker


class WorkerSnapshots:
    """One worker's snapshot in the shared folder (`name`: the worker's, the same after a restart), and the others'."""

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
    """A worker's `own` metrics, with its fellow workers' when it has any."""
    return own if snapshots is None else merged([own.decode(), *snapshots.others()])


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def _rendered(families: list[Metric]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)


def merged(texts: list[str]) -> bytes:
    """Prometheus texts whose series differ by worker as one text: one HELP and TYPE a family. A series two
    texts hold (none should) is the first text's."""
    families: dict[str, Metric] = {}
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for text in texts:
        for family in text_string_to_metric_families(text):
            kept = families.setdefault(family.name, family)
            samples = [s for s in family.samples if (s.name, tuple(sorted(s.labels.items()))) not in seen]
            seen.update((s.name, tuple(sorted(s.labels.items()))) for s in samples)
            if kept is family:
                family.samples = samples
            else:
                kept.samples.extend(samples)
    return _rendered(list(families.values()))


def labelled(text: bytes, name: str, value: str) -> bytes:
    """`text` with the label `name`=`value` on every series (a worker's number on a service's own metrics)."""
    families = list(text_string_to_metric_families(text.decode()))
    for family in families:
        family.samples = [s._replace(labels={**s.labels, name: value}) for s in family.samples]
    return _rendered(families)
