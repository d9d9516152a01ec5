"""The purge service's status page: one self-contained HTML page (inline CSS and vanilla JS, nothing fetched
from elsewhere) that polls `GET /edges` and `GET /purges` and sends purges with `POST /purges`.

The page itself carries no data, so it needs no token; the calls it makes do. It asks for a token, keeps it in
sessionStorage (gone when the tab closes) and sends it as `Authorization: Bearer`. Everything the API returns is
put on the page as text (textContent), never as markup, and a Content-Security-Policy allows only this page's
own script and style (by their hashes) and requests to this origin.
"""

from __future__ import annotations

import base64
import hashlib

from starlette.requests import Request
from starlette.responses import HTMLResponse

POLL_SECONDS = 2
LISTED_PURGES = 20
PURGE_WAIT_SECONDS = 2  # a purge from the form waits this long for every live edge before it is shown

STYLE = """
:root { color-scheme: light dark; --ok: #1a7f37; --bad: #cf222e; --wait: #9a6700; --line: #8884; }
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5rem auto; max-width: 72rem; padding: 0 1rem; }
h1 { font-size: 1.3rem; margin: 0 0 .25rem; }
h2 { font-size: 1.05rem; margin: 1.5rem 0 .5rem; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-weight: 600; }
td.num { font-variant-numeric: tabular-nums; }
.values { font-family: ui-monospace, monospace; font-size: 12px; word-break: break-all; white-space: pre-line; }
.live, .applied, .complete .ack { color: var(--ok); }
.down, .failed { color: var(--bad); }
.pending, .waiting .ack { color: var(--wait); }
.edge-ack { display: inline-block; margin-right: .6rem; }
.muted { opacity: .7; }
[hidden] { display: none !important; }
form { display: grid; gap: .5rem; max-width: 36rem; }
form label { display: grid; gap: .15rem; }
form label.inline { display: flex; gap: .4rem; align-items: center; }
input, select, textarea, button { font: inherit; }
textarea { font-family: ui-monospace, monospace; }
#token-form { display: flex; gap: .5rem; max-width: none; align-items: end; }
#token-form label { flex: 0 1 22rem; }
#load-state.failed, #purge-result.failed { font-weight: 600; }
"""

SCRIPT = """
"use strict";
const TOKEN_KEY = "cdn-purge-token";
const POLL_MS = %(poll_ms)d;
const LISTED = %(listed)d;
const PURGE_WAIT = %(purge_wait)d;
const $ = (id) => document.getElementById(id);
let generation = 0;
let timer = null;

class ApiError extends Error {
  constructor(status, message) { super(status + ": " + message); this.status = status; }
}

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

async function api(path, options) {
  const init = Object.assign({cache: "no-store"}, options || {});
  init.headers = Object.assign({}, init.headers || {}, {"Authorization": "Bearer " + token()});
  const response = await fetch(path, init);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const message = body && typeof body.error === "string" ? body.error : (response.statusText || "request failed");
    throw new ApiError(response.status, message);
  }
  return body;
}

function cell(content, className) {
  const td = document.createElement("td");
  if (content instanceof Node) td.append(content); else td.textContent = content == null ? "" : String(content);
  if (className) td.className = className;
  return td;
}

function span(text, className) {
  const s = document.createElement("span");
  s.textContent = text;
  if (className) s.className = className;
  return s;
}

function age(seconds) {
  if (typeof seconds !== "number" || !isFinite(seconds)) return "\\u2013";
  seconds = Math.max(0, seconds);
  if (seconds < 60) return seconds.toFixed(1) + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

function percent(ratio) {
  return typeof ratio === "number" ? (ratio * 100).toFixed(1) + " %%" : "\\u2013";
}

function count(stats, name) {
  const value = stats && stats[name];
  return typeof value === "number" ? value : 0;
}

function emptyRow(tbody, columns, text) {
  const tr = document.createElement("tr");
  const td = cell(text, "muted");
  td.colSpan = columns;
  tr.append(td);
  tbody.replaceChildren(tr);
}

function renderEdges(edges) {
  const tbody = $("edges").tBodies[0];
  if (!edges.length) { emptyRow(tbody, 8, "No edge has registered yet."); return; }
  tbody.replaceChildren(...edges.map((edge) => {
    const tr = document.createElement("tr");
    tr.dataset.edge = edge.id;
    tr.className = edge.live ? "live-edge" : "down-edge";
    const stats = edge.stats || {};
    const lookups = count(stats, "hits") + count(stats, "misses") + count(stats, "revalidations");
    tr.append(
      cell(edge.id), cell(edge.region), cell(edge.address, "values"),
      cell(span(edge.live ? "live" : "down", edge.live ? "live" : "down"), "state"),
      cell(age(edge.heartbeat_age), "num heartbeat"),
      cell(percent(edge.hit_ratio), "num hit-ratio"),
      cell(lookups, "num"), cell(count(stats, "objects"), "num"));
    return tr;
  }));
}

function acknowledgement(purge) {
  const applied = Object.keys(purge.applied || {});
  const pending = purge.pending || [];
  const complete = purge.complete && (!purge.repurge || purge.repurge.complete);
  const total = applied.length + pending.length;
  let summary = total ? applied.length + "/" + total + " edges" : "no live edge";
  if (purge.repurge && !purge.repurge.complete) summary += ", repeat pending";
  const who = document.createElement("div");
  for (const id of applied) {
    const ack = purge.applied[id];
    const after = typeof ack.after_ms === "number" ? " " + ack.after_ms + " ms" : " (started after)";
    const s = span(id + " \\u2713" + after, "edge-ack applied");
    s.dataset.edge = id;
    who.append(s);
  }
  for (const id of pending) {
    const s = span(id + " \\u2026", "edge-ack pending");
    s.dataset.edge = id;
    who.append(s);
  }
  return {complete, summary, who};
}

function renderPurges(answer) {
  const tbody = $("purges").tBodies[0];
  const purges = answer.purges || [];
  if (!purges.length) { emptyRow(tbody, 7, "No purge in the log."); return; }
  tbody.replaceChildren(...purges.map((purge) => {
    const tr = document.createElement("tr");
    const ack = acknowledgement(purge);
    tr.dataset.purge = purge.id;
    tr.className = ack.complete ? "complete" : "waiting";
    const what = purge.event ? "event " + purge.event + " \\u2192 " + purge.kind : purge.kind;
    const values = (purge.values || []).join("\\n");
    tr.append(
      cell(purge.id, "values"), cell(what), cell(values || "\\u2013", "values"),
      cell(purge.soft ? "soft" : "hard"), cell(age(answer.now - purge.created_at), "num"),
      cell(ack.summary, "ack"), cell(ack.who));
    return tr;
  }));
}

function showLoad(text, failed) {
  const state = $("load-state");
  state.textContent = text;
  state.className = failed ? "failed" : "muted";
}

async function refresh() {
  clearTimeout(timer);
  const mine = ++generation;
  try {
    if (!token()) {
      showLoad("Enter a token to see edges and purges (a read token is enough; purging needs the purge token).", false);
    } else {
      const [edges, purges] = await Promise.all([api("edges"), api("purges?limit=" + LISTED)]);
      if (mine === generation) {
        renderEdges(edges.edges || []);
        renderPurges(purges);
        showLoad("Updated " + new Date().toLocaleTimeString() + ".", false);
      }
    }
  } catch (e) {
    if (mine === generation) showLoad("Cannot read status: " + e.message, true);
  }
  if (mine === generation) timer = setTimeout(refresh, POLL_MS);
}

function showResult(text, failed) {
  const result = $("purge-result");
  result.textContent = text;
  result.className = failed ? "failed" : "";
}

function showFieldsFor(kind) {
  for (const el of document.querySelectorAll(".for-values")) el.hidden = kind === "event" || kind === "all";
  for (const el of document.querySelectorAll(".for-event")) el.hidden = kind !== "event";
}

async function submitPurge(event) {
  event.preventDefault();
  const kind = $("kind").value;
  const body = {kind: kind, soft: $("soft").checked};
  if (kind === "event") {
    body.event = $("event").value.trim();
    const raw = $("fields").value.trim();
    if (raw) {
      try { body.fields = JSON.parse(raw); } catch (e) {
        showResult("Fields are not valid JSON: " + e.message, true);
        return;
      }
    }
  } else if (kind !== "all") {
    body.values = $("values").value.split("\\n").map((v) => v.trim()).filter((v) => v);
  }
  if (!token()) { showResult("Enter the purge token first.", true); return; }
  showResult("Purging\\u2026", false);
  try {
    // Wait a moment for the edges, so the answer (and the list below) can already say who applied it.
    const answer = await api("purges?wait=" + PURGE_WAIT, {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    const ack = acknowledgement(answer);
    showResult("Logged " + answer.id + (answer.replayed ? " (replayed)" : "") + "; applied by " + ack.summary +
               (ack.complete ? "." : " so far: see below."), false);
  } catch (e) {
    showResult("Purge failed: " + e.message, true);
  }
  refresh();
}

function useToken(event) {
  event.preventDefault();
  const value = $("token").value.trim();
  if (value) sessionStorage.setItem(TOKEN_KEY, value); else sessionStorage.removeItem(TOKEN_KEY);
  refresh();
}

function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  $("token").value = "";
  refresh();
}

$("token").value = token();
$("token-form").addEventListener("submit", useToken);
$("token-forget").addEventListener("click", forgetToken);
$("kind").addEventListener("change", () => showFieldsFor($("kind").value));
$("purge-form").addEventListener("submit", submitPurge);
showFieldsFor($("kind").value);
refresh();
""" % {"poll_ms": POLL_SECONDS * 1000, "listed": LISTED_PURGES, "purge_wait": PURGE_WAIT_SECONDS}

BODY = """
<h1>Purge service</h1>
<p id="load-state" class="muted" role="status">Loading\u2026</p>
<form id="token-form">
  <label>Token <input id="token" type="password" autocomplete="off" spellcheck="false"></label>
  <button type="submit" id="token-use">Use token</button>
  <button type="button" id="token-forget">Forget</button>
</form>

<h2>Edges</h2>
<table id="edges">
  <thead><tr><th>Edge</th><th>Region</th><th>Address</th><th>State</th><th>Heartbeat</th>
    <th title="hits / (hits + misses + revalidations) since the edge started">Hit ratio</th>
    <th>Lookups</th><th>Objects</th></tr></thead>
  <tbody></tbody>
</table>

<h2>Purge</h2>
<form id="purge-form">
  <label>Kind
    <select id="kind">
      <option value="url">url</option><option value="prefix">prefix</option>
      <option value="tag" selected>tag</option><option value="event">event</option><option value="all">all</option>
    </select>
  </label>
  <label class="for-values">Values, one a line (absolute URLs for url and prefix)
    <textarea id="values" rows="3" spellcheck="false"></textarea></label>
  <label class="for-event">Event <input id="event" placeholder="product.updated" spellcheck="false"></label>
  <label class="for-event">Fields (a JSON object)
    <textarea id="fields" rows="2" spellcheck="false" placeholder='{"id": 42}'></textarea></label>
  <label class="inline"><input id="soft" type="checkbox"> soft (mark stale: still served while revalidating)</label>
  <div><button type="submit" id="purge-submit">Purge</button></div>
  <p id="purge-result" role="status"></p>
</form>

<h2>Recent purges</h2>
<table id="purges">
  <thead><tr><th>Purge</th><th>Kind</th><th>Values</th><th>Mode</th><th>Age</th><th>Acknowledged</th>
    <th>By edge</th></tr></thead>
  <tbody></tbody>
</table>
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Purge service status</title>
<style>{STYLE}</style>
</head>
<body>
{BODY}
<script>{SCRIPT}</script>
</body>
</html>
"""

# Only this page's own script and style run, and it may talk to this origin only.
CONTENT_SECURITY_POLICY = (f"default-src 'none'; script-src {_sha256(SCRIPT)}; style-src {_sha256(STYLE)}; "
                           "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


async def status_page(request: Request) -> HTMLResponse:
    """The status page; it holds no data (the API calls it makes need a token)."""
    return HTMLResponse(PAGE, headers=HEADERS)
