"""The HTML leaderboard: one self-contained page per dataset and protocol (open it from disk, no server) with sortable
columns, intervals, tie marks, cost and a few heatmap thumbnails per run, and one page per category."""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from anomaly_zoo.metrics import METRIC_NAMES
from anomaly_zoo.reporting.leaderboard_formats import COST_COLUMNS, TIE, cost_value
from anomaly_zoo.reporting.rows import Row

THUMBNAILS = 3

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
table { border-collapse: collapse; margin: .5em 0 1.5em; background: #fff; }
th, td { padding: .25em .6em; border-bottom: 1px solid #e4e4e4; text-align: right; white-space: nowrap; }
th { cursor: pointer; background: #f0f0f0; user-select: none; } th:first-child, td:first-child { text-align: left; }
th.sorted-desc::after { content: " ▼"; } th.sorted-asc::after { content: " ▲"; }
td .spread { color: #777; font-size: .85em; } td.best { font-weight: bold; } td .tie { color: #1565c0; }
tr.failed td { color: #c62828; } img.thumb { height: 64px; margin-right: 2px; vertical-align: middle; }
.note { max-width: 70em; font-size: .9em; color: #444; }
"""

# Click a header to sort (numbers by their value, text alphabetically); `#sort=<column>` sorts on load (and lets a
# headless browser check it). Marks the body with how many thumbnails loaded and which column is sorted.
_SCRIPT = """
function sortTable(table, col, descending) {
  var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
  rows.sort(function (a, b) {
    var x = a.cells[col].getAttribute("data-value"), y = b.cells[col].getAttribute("data-value");
    var nx = parseFloat(x), ny = parseFloat(y);
    if (isNaN(nx) && isNaN(ny)) {
      return descending ? (y || "").localeCompare(x || "") : (x || "").localeCompare(y || "");
    }
    if (isNaN(nx)) { return 1; } if (isNaN(ny)) { return -1; }
    return descending ? ny - nx : nx - ny;
  });
  rows.forEach(function (r) { body.appendChild(r); });
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c, i) {
    c.className = i === col ? (descending ? "sorted-desc" : "sorted-asc") : "";
  });
  var name = table.tHead.rows[0].cells[col].textContent;
  document.body.setAttribute("data-sorted", name + (descending ? " desc" : " asc"));
}
window.addEventListener("load", function () {
  Array.prototype.forEach.call(document.querySelectorAll("table.board"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell, i) {
      cell.addEventListener("click", function () { sortTable(table, i, cell.className !== "sorted-desc"); });
    });
  });
  var wanted = decodeURIComponent((location.hash.match(/sort=([^&]+)/) || [])[1] || "");
  var first = document.querySelector("table.board");
  if (wanted && first) {
    Array.prototype.forEach.call(first.tHead.rows[0].cells, function (c, i) {
      if (c.getAttribute("data-key") === wanted) { sortTable(first, i, true); }
    });
  }
  var imgs = Array.prototype.slice.call(document.querySelectorAll("img.thumb"));
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-loaded", ok + "/" + imgs.length);
});
"""


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def _metric_td(row: Row, metric: str, category: str | None, best: float | None) -> str:
    value = row.mean(metric, category)
    if value is None:
        return "<td data-value=''></td>"
    spread = ""
    std, interval = row.std(metric, category), row.interval(metric, category)
    if std is not None:
        spread = f" <span class='spread'>± {100 * std:.1f} ({len(row.values(metric, category))})</span>"
    elif interval:
        spread = f" <span class='spread'>[{_pct(interval[0])}, {_pct(interval[1])}]</span>"
    tie = f" <span class='tie' title='not significantly different from the best'>{TIE}</span>" if (
        category is None and row.tie.get(metric)) else ""  # fmt: skip
    css = " class='best'" if row.status == "ok" and value == best else ""
    return f"<td{css} data-value='{value:.10g}'>{_pct(value)}{spread}{tie}</td>"


def _thumbnails(row: Row, page: Path) -> str:
    found = sorted((row.first.path.parent / "heatmaps").glob("*.png"))[:THUMBNAILS] if row.first.path else []
    return "".join(
        f"<img class='thumb' src='{html.escape(Path(os.path.relpath(p, page.parent)).as_posix())}' "
        f"alt='{html.escape(p.stem)}' title='{html.escape(p.stem)}'>"
        for p in found
    )


def _cost_td(row: Row, key: str) -> str:
    value = cost_value(row, key)
    if value is None:
        return "<td data-value=''></td>"
    shown = f"{value:.4g}" if isinstance(value, float) else str(value)
    return f"<td data-value='{html.escape(str(value))}'>{html.escape(shown)}</td>"


def _table(rows: list[Row], category: str | None, page: Path, with_cost: bool, metrics: Sequence[str]) -> str:
    ok = [r for r in rows if r.status == "ok"]
    best = {m: max((v for v in (r.mean(m, category) for r in ok) if v is not None), default=None) for m in metrics}
    head = ["<th data-key='run'>run</th>", "<th data-key='seeds'>seeds</th>"]
    head += [f"<th data-key='{html.escape(m)}'>{html.escape(m)}</th>" for m in metrics]
    if with_cost:
        head += [f"<th data-key='{k}'>{k.replace('_', ' ')}</th>" for k in COST_COLUMNS]
    head.append("<th data-key='heatmaps'>heatmaps</th>")
    lines = ["<table class='board'><thead><tr>" + "".join(head) + "</tr></thead><tbody>"]
    for row in rows:
        esc = html.escape
        label = esc(row.label) + (f" <span class='spread'>({esc(row.scope)})</span>" if row.scope else "")
        label += "" if row.status == "ok" else f" (failed: {esc(row.first.error)})"
        cells = [
            f"<td data-value='{esc(row.label)}'>{label}</td>",
            f"<td data-value='{len(row.runs)}'>{len(row.runs)}</td>",
        ]
        cells += [_metric_td(row, m, category, best[m]) for m in metrics]
        if with_cost:
            cells += [_cost_td(row, key) for key in COST_COLUMNS]
        cells.append(f"<td data-value=''>{_thumbnails(row, page)}</td>")
        lines.append(f"<tr class='{'ok' if row.status == 'ok' else 'failed'}'>" + "".join(cells) + "</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _page(title: str, intro: list[str], body: str) -> str:
    return "\n".join([
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>", *[f"<p class='note'>{html.escape(p)}</p>" for p in intro], body,
        f"<script>{_SCRIPT}</script></body></html>",
    ])  # fmt: skip


def write_html(path: Path, title: str, intro: list[str], rows: list[Row], categories: list[str],
               metrics: Sequence[str] = METRIC_NAMES,
               members: list[tuple[str, list[Row]]] | None = None) -> list[Path]:  # fmt: skip
    """The main page (means over categories, a union's per-dataset means, cost, links to the categories) and one
    page per category; a column per metric (the suite's seven and the dataset's own)."""
    stem = path.with_suffix("")
    # quoted: a union's `visa:candle` would otherwise read as a URL scheme
    links = " · ".join(f"<a href='{html.escape(quote(f'{stem.name}_{c}.html'))}'>{html.escape(c)}</a>"
                       for c in categories)  # fmt: skip
    body = "<h2>Mean over categories</h2>" + _table(rows, None, path, True, metrics)
    for member, member_rows in members or []:
        body += f"<h2>Mean over {html.escape(member)}'s categories</h2>" + _table(member_rows, None, path, False,
                                                                                  METRIC_NAMES)  # fmt: skip
    body += f"<p>Per category: {links}</p>"
    path.write_text(_page(title, intro, body), encoding="utf-8")
    written = [path]
    for c in categories:
        page = Path(f"{stem}_{c}.html")
        back = f"<p><a href='{html.escape(path.name)}'>all categories</a></p>"
        page.write_text(_page(f"{title}: {c}", intro, back + _table(rows, c, page, False, metrics)), encoding="utf-8")
        written.append(page)
    return written
