"""`cdn demo` end to end: a short run starts everything, reports figures that add up, and stops cleanly."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

from tests.servers import ROOT


def test_a_short_demo_reports_figures_that_add_up(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cdn", "demo", "--duration", "6", "--rate", "25", "--abusive", "2", "--quiet",
         "--products", "200", "--change-rate", "0.5", "--report-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    out = result.stdout
    assert result.returncode == 0, result.stderr[-3000:] + out[-3000:]
    started = float(re.search(r"started in ([\d.]+) s", out).group(1))
    assert started < 10
    total, hits, misses, passes, refused, errors = (int(n.replace(",", "")) for n in re.search(
        r"requests: ([\d,]+) = ([\d,]+) hits \+ ([\d,]+) misses \+ ([\d,]+) passes \+ ([\d,]+) refused \+ ([\d,]+) errors",
        out).groups())
    assert total == hits + misses + passes + refused + errors
    assert hits + misses > total // 2  # mostly answered (a loaded machine may time some out)
    assert re.search(r"origin offload: [\d.]+% of requests", out)
    assert "older than an acknowledged purge: 0" in out
    by_edges, by_origin = (int(n) for n in re.search(
        r"origin requests counted by the edges: (\d+), by the origin itself: (\d+)", out).groups())
    assert by_edges == by_origin
    html = next(tmp_path.glob("demo-*/report.html"))
    assert "<svg" in html.read_text()
    assert next(tmp_path.glob("demo-*/offload.png")).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_bench_reports_on_a_running_deployment(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    import argparse

    from cdn.demo import TOKEN, LocalCdn, bench, running

    cdn = LocalCdn(["eu-west", "us-east"], 1, products=100, assets=10, replica_lag_ms=0)
    async with running(cdn):
        args = argparse.Namespace(duration=3, rate=20, products=100, assets=10, zipf=1.1, change_rate=0.5, abusive=0,
                                  report_dir=str(tmp_path), seed=1, quiet=True, regions="eu-west,us-east",
                                  front_door=cdn.urls["front-door"], origin=cdn.urls["origin"],
                                  purge_api=cdn.urls["purge-api"], token=TOKEN)
        assert await bench(args) == 0
    out = capsys.readouterr().out
    assert re.search(r"origin offload: [\d.]+% of requests", out)
    assert "older than an acknowledged purge: 0" in out
    assert next(tmp_path.glob("demo-*/report.html")).exists()


def test_ctrl_c_stops_the_demo_cleanly(tmp_path: Path) -> None:
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "cdn", "demo", "--duration", "120", "--rate", "10", "--quiet",
                             "--report-dir", str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    assert proc.stdout is not None
    printed = []
    for line in proc.stdout:
        printed.append(line)
        if "running the workload" in line:
            break
    ports = [int(p) for p in re.findall(r"http://127\.0\.0\.1:(\d+)", "".join(printed))]
    assert len(ports) >= 9  # origin, purge API, shield, six edges, front door
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    try:
        rest = proc.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the demo did not stop within 30 s of Ctrl-C") from None
    assert proc.returncode == 130, rest
    assert "stopped." in rest
    for port in ports:  # nothing left listening
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, port
