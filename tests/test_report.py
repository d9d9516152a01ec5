"""The report renderers: terminal summary, self-contained HTML, PNG chart; fed by reports built from hand-made traces."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from cdn.report import nice_ticks, render_html, render_png, render_terminal
from cdn.workload import (
    AbusiveClient,
    Change,
    ClientInfo,
    OriginSample,
    PurgeAck,
    RequestRecord,
    Trace,
    WorkloadConfig,
)

T0 = 1_800_000_000.0
MODELLED = {"us-east": 82.1, "eu-west": 12.5}


def make_trace(origin: bool = True, edge_name: str = "us-east-1") -> Trace:
    """Six seconds of a small run: hits, misses, a pass, refusals, an error, a stale answer, two changes."""
    config = WorkloadConfig(duration=6.0, rate=10.0, regions={"us-east": 0.5, "eu-west": 0.5},
                            abusive=[AbusiveClient(20.0, cache_busting=True)])
    trace = Trace(config, "http://127.0.0.1:8000", "http://127.0.0.1:9000" if origin else None,
                  "http://127.0.0.1:8090" if origin else None, started=T0, ended=T0 + 6.2)
    trace.clients = [ClientInfo("127.0.0.10", "us-east", "ordinary"), ClientInfo("127.0.0.11", "eu-west", "ordinary"),
                     ClientInfo("127.0.0.200", "us-east", "cache-busting")]
    trace.ttls = {"/api/products/1": 60.0, "/static/js/app-1.js": 31536000.0, "/api/cart": 0.0}

    def add(at: float, client: str, region: str, key: str, status: int, outcome: str, edge: str | None,
            version: int | None = None, detail: str | None = None, latency: float = 0.002) -> None:
        trace.requests.append(RequestRecord(T0 + at, latency, client, region, "product", key, status, outcome, edge,
                                            detail, 0 if status in (0, 429) else 1000, version, client.endswith(".200")))

    for second in range(6):
        add(second + 0.1, "127.0.0.10", "us-east", "/api/products/1", 200, "miss" if second == 0 else "hit",
            edge_name, 1 if second < 3 else 2, latency=0.09 if second == 0 else 0.001)
        add(second + 0.2, "127.0.0.11", "eu-west", "/static/js/app-1.js", 200, "miss" if second == 0 else "hit", "eu-west-1")
        add(second + 0.3, "127.0.0.200", "us-east", "/static/js/app-1.js", 429 if second else 200,
            "refused" if second else "miss", edge_name)
    add(2.5, "127.0.0.10", "us-east", "/api/cart", 200, "pass", edge_name)
    add(3.5, "127.0.0.11", "eu-west", "/api/products/1", 200, "stale", "eu-west-1", 2, "stale-while-revalidate")
    add(4.5, "127.0.0.11", "eu-west", "/api/products/1", 0, "error", None, detail="timeout", latency=10.0)
    ack = PurgeAck("p-1", T0 + 2.9, True, {edge_name: T0 + 2.902, "eu-west-1": T0 + 2.905}, ("product-1", "products"))
    trace.changes = [Change(T0 + 2.89, 1, 200, 2, "p-1", 80, ack)]
    if origin:
        trace.origin_samples = [OriginSample(T0 - 0.01 + s, 100 + 2 * s, 5 + (s >= 3), 50_000 + 400 * s) for s in range(8)]
    return trace


@pytest.fixture
def report() -> dict[str, Any]:
    return json.loads(json.dumps(make_trace().to_report(MODELLED)))


def test_terminal_states_offload_of_requests_and_bytes(report: dict[str, Any]) -> None:
    text = render_terminal(report)
    assert re.search(r"^origin offload: \d+\.\d% of requests$", text, re.M)
    assert re.search(r"^origin offload: \d+\.\d% of bytes$", text, re.M)
    assert f"origin offload: {report['origin']['offload_requests'] * 100:.1f}% of requests" in text


def test_terminal_request_sum_adds_up(report: dict[str, Any]) -> None:
    line = next(line for line in render_terminal(report).splitlines() if line.startswith("requests:"))
    match = re.fullmatch(r"requests: (\d+) = (\d+) hits \((\d+) of them stale\) \+ (\d+) misses \+ (\d+) passes"
                         r" \+ (\d+) refused \+ (\d+) errors", line)
    assert match, line
    total, hits, stale, *rest = map(int, match.groups())
    assert total == hits + sum(rest) == len(make_trace().requests)
    assert stale == 1


def test_terminal_compares_with_the_best_possible(report: dict[str, Any]) -> None:
    text = render_terminal(report)
    closeness = report["ideal"]["achieved_of_best"]
    assert f"we came to {closeness * 100:.1f}% of the best possible" in text
    assert "first requests" in text and "after purges" in text and "cache per edge" in text


def test_terminal_shows_hit_ratio_latency_purges_staleness_and_refusals(report: dict[str, Any]) -> None:
    text = render_terminal(report)
    assert re.search(r"^  us-east-1 .* \d+\.\d%$", text, re.M) and re.search(r"^  eu-west-1 .* \d+\.\d%$", text, re.M)
    assert re.search(r"^  eu-west .*\d+\.\d%$", text, re.M)
    assert re.search(r"^  us-east .* 82\.1$", text, re.M)  # measured p50/p95/p99 beside the modelled origin round trip
    # Acks 2 ms (us-east-1) and 5 ms (eu-west-1) after the purge was logged.
    assert "purge propagation: p50 3.50 ms, p99 4.97 ms per edge; every edge: p50 5.00 ms, p99 5.00 ms" in text
    assert "stale-while-revalidate 1, stale-if-error 0" in text
    assert "older than an acknowledged purge: 0" in text
    assert "refused by the shield: 5 (429: 5)" in text and "127.0.0.200  cache-busting" in text


def test_terminal_says_unknown_when_the_origin_could_not_be_read() -> None:
    text = render_terminal(make_trace(origin=False).to_report())
    assert "origin offload: unknown of requests" in text
    assert "could not be read" in text and "we came to unknown of the best possible" in text


class References(HTMLParser):
    """Collects tags and every attribute value, and the text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += [value or "" for _, value in attrs]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_is_one_self_contained_page(report: dict[str, Any]) -> None:
    page = render_html(report, "report.png")
    parsed = References()
    parsed.feed(page)
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert not {"script", "link", "img", "iframe", "object", "embed"} & set(parsed.tags)
    assert not [a for a in parsed.attributes if "http:" in a or "https:" in a or a.startswith("//")]
    assert "url(" not in page and "@import" not in page
    assert parsed.tags.count("svg") == 2
    without_text = page
    for text in parsed.text:
        without_text = without_text.replace(text, "")
    assert "http://" not in without_text and "https://" not in without_text
    assert "http://127.0.0.1:8000" in "".join(parsed.text)  # in text, where it is only read
    assert "report.png" in "".join(parsed.text)


def test_html_has_the_figures_and_tables(report: dict[str, Any]) -> None:
    page = render_html(report)
    assert re.search(r"origin offload: \d+\.\d% of requests", page) and "of the best possible" in page
    assert "us-east-1" in page and "eu-west-1" in page and "82.1" in page
    assert "older than an acknowledged purge" in page and "refused by the shield: 5" in page
    assert page.count("<polyline") == 3  # hit ratio, origin and client requests per second


def test_html_escapes_what_came_from_the_network() -> None:
    page = render_html(make_trace(edge_name="<script>alert(1)</script>").to_report())
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_png_is_a_chart_of_the_run(report: dict[str, Any], tmp_path: Path) -> None:
    from matplotlib.image import imread

    path = tmp_path / "chart.png"
    render_png(report, str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(str(path))
    assert pixels.shape[:2] == (400, 900)
    assert pixels[..., :3].std() > 0.05  # not a blank canvas


def test_renderers_take_an_empty_run(tmp_path: Path) -> None:
    trace = Trace(WorkloadConfig(duration=1.0), "http://127.0.0.1:8000", None, None, started=T0, ended=T0 + 1)
    report = trace.to_report()
    assert "requests: 0 = 0 hits + 0 misses + 0 passes + 0 refused + 0 errors" in render_terminal(report)
    assert render_html(report).count("<svg") == 2
    render_png(report, str(tmp_path / "empty.png"))
    assert (tmp_path / "empty.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("top", "ticks"), [(95, [0, 20, 40, 60, 80, 100]), (1, [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
                                            (0, [0.0, 1.0]), (260, [0, 100, 200, 300])])
def test_nice_ticks_cover_the_range_in_round_steps(top: float, ticks: list[float]) -> None:
    assert nice_ticks(top) == pytest.approx(ticks)
