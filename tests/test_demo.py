"""`cdn demo` end to end: a short run starts everything, reports figures that add up, and stops cleanly."""

from __future__ import annotations

import re
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
    assert errors == 0
    assert re.search(r"origin offload: [\d.]+% of requests", out)
    assert "older than an acknowledged purge: 0" in out
    by_edges, by_origin = (int(n) for n in re.search(
        r"origin requests counted by the edges: (\d+), by the origin itself: (\d+)", out).groups())
    assert by_edges == by_origin
    html = next(tmp_path.glob("demo-*/report.html"))
    assert "<svg" in html.read_text()
    assert next(tmp_path.glob("demo-*/offload.png")).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
