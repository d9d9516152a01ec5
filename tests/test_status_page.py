"""The purge API's status page in a real headless browser: Debian's Chromium driven by Playwright.

A real redis-server, an origin, the purge API and two edges run on loopback; the page is loaded as an operator
would: it lists the edges, sends a purge from its form and shows every edge acknowledging it. `./dev setup`
installs Chromium (apt) and Playwright (the test extras); Playwright's own browser download is never used.
A missing browser fails the test with the fix in its message instead of skipping it.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.app import create_app as create_edge
from edge.settings import EdgeSettings
from purge_api.app import create_app as create_purge_api
from purge_api.settings import PurgeApiSettings
from tests.redis_server import RedisServer
from tests.scripted_origin import Answer, ScriptedOrigin
from tests.servers import ThreadServer, free_port

TOKEN = "purge-secret"
READ_TOKEN = "read-only"
HOST = "shop.example"
EDGES = {"edge-a": "eu-west", "edge-b": "us-east"}
WAIT_MS = 15_000  # the longest any expectation waits for the page (it polls every 2 s)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("Chromium is not installed (/usr/bin/chromium): run ./dev setup, which apt-installs it", pytrace=False)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is not installed: run ./dev setup (or pip install -e '.[test]')", pytrace=False)
    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@dataclass
class Site:
    api_url: str
    edge_urls: dict[str, str]
    origin: ScriptedOrigin
    client: httpx.Client

    def get(self, edge_id: str, path: str) -> httpx.Response:
        return self.client.get(self.edge_urls[edge_id] + path, headers={"Host": HOST})

    def purges(self) -> list[dict]:
        answer = self.client.get(self.api_url + "/purges", headers={"Authorization": f"Bearer {READ_TOKEN}"})
        return answer.json()["purges"]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    redis = RedisServer(tmp_path).start()
    origin = ScriptedOrigin()
    origin.route("/api/products/42", Answer(headers=[("Cache-Control", "max-age=600"), ("Surrogate-Key", "product-42")],
                                            body=b"product 42"))
    servers: list[ThreadServer] = []
    try:
        origin_server = ThreadServer(origin).__enter__()
        servers.append(origin_server)
        api = ThreadServer(create_purge_api(PurgeApiSettings(redis=redis.url, token=TOKEN, read_tokens=[READ_TOKEN])))
        servers.append(api.__enter__())
        edge_urls = {}
        for edge_id, region in EDGES.items():
            port = free_port()
            edge = create_edge(EdgeSettings(origin=origin_server.url, id=edge_id, region=region, port=port,
                                            advertise_url=f"http://127.0.0.1:{port}", redis=redis.url,
                                            heartbeat_interval=0.2, access_log=False))
            servers.append(ThreadServer(edge, port=port, proxy=True).__enter__())
            edge_urls[edge_id] = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=15) as client:
            yield Site(api.url, edge_urls, origin, client)
    finally:
        for server in reversed(servers):
            server.__exit__(None, None, None)
        redis.kill()


@pytest.fixture
def page(browser: Any, site: Site) -> Iterator[Any]:
    """A fresh tab (its own sessionStorage) on the status page; fails the test on any script error or CSP block."""
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    page.goto(site.api_url + "/status")
    yield page
    context.close()
    # Failed calls the test provoked (401/403/422) are logged by Chromium as failed resources, nothing else.
    unexpected = [p for p in problems if "the server responded with a status of 4" not in p]
    assert not unexpected, unexpected


def use_token(page: Any, token: str) -> None:
    page.fill("#token", token)
    page.click("#token-use")


def submit_purge(page: Any, kind: str, values: str = "", event: str = "", fields: str = "", soft: bool = False) -> None:
    page.select_option("#kind", kind)
    if values:
        page.fill("#values", values)
    if event:
        page.fill("#event", event)
        page.fill("#fields", fields)
    page.set_checked("#soft", soft)
    page.click("#purge-submit")


def test_page_lists_the_edges_and_shows_a_purge_from_its_form_acknowledged_by_every_edge(page: Any, site: Site) -> None:
    from playwright.sync_api import expect

    for edge_id in EDGES:  # one miss and one hit each: a hit ratio of one half
        assert "fwd=miss" in site.get(edge_id, "/api/products/42").headers["cache-status"]
        assert "hit" in site.get(edge_id, "/api/products/42").headers["cache-status"]
    expect(page.locator("#load-state")).to_contain_text("Enter a token", timeout=WAIT_MS)
    use_token(page, TOKEN)

    rows = page.locator("#edges tbody tr[data-edge]")
    expect(rows).to_have_count(2, timeout=WAIT_MS)
    for edge_id, region in EDGES.items():
        row = page.locator(f'#edges tr[data-edge="{edge_id}"]')
        expect(row).to_contain_text(region)
        expect(row).to_contain_text(site.edge_urls[edge_id])
        expect(row.locator(".state")).to_have_text("live")
        expect(row.locator(".hit-ratio")).to_have_text("50.0 %", timeout=WAIT_MS)

    submit_purge(page, "tag", values="product-42")
    expect(page.locator("#purge-result")).to_contain_text("applied by 2/2 edges.", timeout=WAIT_MS)
    found = re.search(r"p-[0-9a-f]+", page.locator("#purge-result").inner_text())
    assert found is not None
    purge = page.locator(f'#purges tr[data-purge="{found.group()}"]')
    expect(purge).to_have_class("complete", timeout=WAIT_MS)
    expect(purge.locator(".ack")).to_have_text("2/2 edges")
    expect(purge).to_contain_text("product-42")
    expect(purge).to_contain_text("hard")
    for edge_id in EDGES:
        expect(purge.locator(f'.applied[data-edge="{edge_id}"]')).to_have_count(1)

    # The page told the truth: the API agrees, and both edges go back to the origin.
    [listed] = site.purges()
    assert listed["id"] == found.group() and listed["complete"] and set(listed["applied"]) == set(EDGES)
    for edge_id in EDGES:
        assert "fwd=miss" in site.get(edge_id, "/api/products/42").headers["cache-status"]

    # The token lives in this tab's sessionStorage: a reload keeps watching without asking again.
    page.reload()
    expect(page.locator("#edges tbody tr[data-edge]")).to_have_count(2, timeout=WAIT_MS)
    expect(page.locator("#purges tbody tr[data-purge]")).to_have_count(1, timeout=WAIT_MS)


def test_page_shows_the_api_error_for_a_wrong_or_read_only_token(page: Any, site: Site) -> None:
    from playwright.sync_api import expect

    use_token(page, "not-the-token")
    expect(page.locator("#load-state")).to_have_text("Cannot read status: 403: token not accepted", timeout=WAIT_MS)
    submit_purge(page, "tag", values="product-42")
    expect(page.locator("#purge-result")).to_have_text("Purge failed: 403: token not accepted", timeout=WAIT_MS)
    expect(page.locator("#purge-result")).to_have_class("failed")

    use_token(page, READ_TOKEN)  # may watch, may not purge
    expect(page.locator("#edges tbody tr[data-edge]")).to_have_count(2, timeout=WAIT_MS)
    submit_purge(page, "all")
    expect(page.locator("#purge-result")).to_have_text(
        "Purge failed: 403: this token may read purge status but not purge", timeout=WAIT_MS)

    page.click("#token-forget")
    expect(page.locator("#load-state")).to_contain_text("Enter a token", timeout=WAIT_MS)
    assert site.purges() == []


def test_page_shows_a_refused_purge_and_sends_events_and_shows_values_as_text(page: Any, site: Site) -> None:
    from playwright.sync_api import expect

    use_token(page, TOKEN)
    submit_purge(page, "url", values="/api/products/42")
    expect(page.locator("#purge-result")).to_contain_text(
        "Purge failed: 422: url '/api/products/42' must be an absolute", timeout=WAIT_MS)
    submit_purge(page, "event", event="product.updated", fields="{not json")
    expect(page.locator("#purge-result")).to_contain_text("Fields are not valid JSON", timeout=WAIT_MS)
    assert site.purges() == []

    submit_purge(page, "event", event="product.updated", fields='{"id": 42}', soft=True)
    expect(page.locator("#purge-result")).to_contain_text("Logged p-", timeout=WAIT_MS)
    event = page.locator("#purges tbody tr[data-purge]").first
    expect(event).to_contain_text("event product.updated")
    expect(event).to_contain_text("product-42")
    expect(event).to_contain_text("soft")
    expect(event).to_have_class("complete", timeout=WAIT_MS)

    markup = '<img/src=x/onerror=alert(1)><b>bold</b>'
    submit_purge(page, "tag", values=markup)
    newest = page.locator("#purges tbody tr[data-purge]").first
    expect(newest).to_contain_text(markup, timeout=WAIT_MS)  # shown as text ...
    expect(newest.locator("img, b")).to_have_count(0)  # ... never as markup
