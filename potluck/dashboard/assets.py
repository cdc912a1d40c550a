"""The dashboard's stylesheet and script, served from the package (no CDN).

The script keeps a page live: every `POLL_MS` it asks `/api/status` for the
`revision` (which changes when the ledger grows or the swarm changes), and
when that differs from the page's, it fetches the page again with
`?partial=1` (the server renders only the content) and swaps it in. Without
JavaScript the pages are complete, only not live.
"""

from __future__ import annotations

POLL_MS = 2000

CSS = """
:root { --ink: #1d2330; --muted: #667085; --line: #e4e7ec; --good: #2f9e6f; --bad: #d33;
  --accent: #3366cc; --card: #f8f9fb; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: var(--ink); background: #fff; }
header { display: flex; align-items: center; gap: 18px; padding: 10px 24px;
  border-bottom: 1px solid var(--line); background: #fcfcfd; flex-wrap: wrap; }
header .brand { font-weight: 700; font-size: 16px; }
header .swarm { color: var(--muted); }
header nav a { margin-right: 14px; color: var(--ink); text-decoration: none; }
header nav a.active { color: var(--accent); font-weight: 600;
  border-bottom: 2px solid var(--accent); }
#live { margin-left: auto; color: var(--muted); font-size: 12px; }
#live.offline { color: var(--bad); }
main { padding: 16px 24px 32px; max-width: 1200px; }
h1 { font-size: 20px; margin: 6px 0 14px; }
h2 { font-size: 16px; margin: 24px 0 8px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin-bottom: 12px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 8px 14px; min-width: 130px; }
.card .label { color: var(--muted); font-size: 12px; }
.card .value { font-size: 20px; font-weight: 600; }
table { border-collapse: collapse; width: 100%; margin: 4px 0 8px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { color: var(--muted); font-weight: 600; font-size: 12px; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; }
a { color: var(--accent); }
.good { color: var(--good); font-weight: 600; }
.bad { color: var(--bad); font-weight: 600; }
.muted { color: var(--muted); }
.badge { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 11px;
  background: #eef2ff; color: #334; }
.badge.validator { background: #fff4e5; }
.badge.bad { background: #fdecec; }
.notice { background: #fff8e6; border: 1px solid #f5d78e; padding: 8px 12px;
  border-radius: 6px; }
pre { background: var(--card); border: 1px solid var(--line); padding: 10px;
  overflow: auto; max-height: 480px; font-size: 12px; }
svg.chart { max-width: 100%; height: auto; border: 1px solid var(--line);
  border-radius: 6px; background: #fff; }
dl.fields { display: grid; grid-template-columns: 170px 1fr; gap: 4px 12px; }
dl.fields dt { color: var(--muted); }
dl.fields dd { margin: 0; word-break: break-all; }
footer { padding: 12px 24px; color: var(--muted); font-size: 12px;
  border-top: 1px solid var(--line); }
.filters a { margin-right: 8px; }
"""

JS = """
(function () {
  "use strict";
  var live = document.getElementById("live");
  function content() { return document.getElementById("content"); }
  function mark(text, offline) {
    if (!live) { return; }
    live.textContent = text;
    live.className = offline ? "offline" : "";
  }
  async function refresh() {
    var status = await fetch("/api/status", {cache: "no-store"});
    if (!status.ok) { throw new Error("status " + status.status); }
    var body = await status.json();
    var current = content();
    if (current && body.revision !== current.getAttribute("data-revision")) {
      var url = new URL(window.location.href);
      url.searchParams.set("partial", "1");
      var page = await fetch(url.toString(), {cache: "no-store"});
      if (page.ok) {
        var holder = document.createElement("div");
        holder.innerHTML = await page.text();
        var fresh = holder.querySelector("#content");
        if (fresh) { current.replaceWith(fresh); }
      }
    }
    mark("live, updated " + new Date().toLocaleTimeString(), false);
  }
  function tick() {
    refresh().catch(function () { mark("offline: retrying", true); })
      .finally(function () { window.setTimeout(tick, POLL_MS); });
  }
  mark("live", false);
  window.setTimeout(tick, POLL_MS);
})();
""".replace("POLL_MS", str(POLL_MS))
