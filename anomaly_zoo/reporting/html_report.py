"""A self-contained HTML report (open it from disk, no server): images sorted by score, with their overlays."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; margin: 0 0 1em; padding: .6em; }
.card.anomalous { border-left: 6px solid #c62828; } .card.normal { border-left: 6px solid #2e7d32; }
.card img { max-width: 100%; height: auto; display: block; }
.meta { font-size: .9em; margin-bottom: .4em; } .err { color: #c62828; }
table { border-collapse: collapse; width: 100%; table-layout: fixed; }
td, th { padding: .2em .6em; border-bottom: 1px solid #eee; text-align: left; overflow-wrap: anywhere; }
"""

# Marks the page with how many overlays actually loaded, for a headless-browser check and for the reader.
_CHECK = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.querySelectorAll("img.overlay"));
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-loaded", ok + "/" + imgs.length);
  document.getElementById("loaded").textContent = ok + " of " + imgs.length + " overlays loaded";
});
"""


def write_report(
    path: Path, rows: Sequence, threshold: float | None, threshold_source: str, notes: Sequence[str] = ()
) -> Path:
    scored = sorted((r for r in rows if r.score is not None), key=lambda r: -r.score)
    failed = [r for r in rows if r.error]
    n_anomalous = sum(1 for r in scored if r.decision == "anomalous")
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>anomaly_zoo prediction report</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Prediction report</h1>",
        "<p>",
        f"{len(scored)} images scored, {len(failed)} unreadable. ",
        (
            f"Threshold {threshold:.6g} ({esc(threshold_source)}): {n_anomalous} anomalous."
            if threshold is not None
            else "No threshold (pass threshold=... or use a checkpoint that records one): no decisions."
        ),
        " <span id='loaded'></span></p>",
        *(f"<p class='note'>{esc(note)}</p>" for note in notes),  # how the scores were made, where it matters
    ]
    if failed:
        parts.append("<h2>Unreadable files</h2><table><tr><th>file</th><th>error</th></tr>")
        parts += [f"<tr><td>{esc(r.path)}</td><td class='err'>{esc(r.error)}</td></tr>" for r in failed]
        parts.append("</table>")
    parts.append("<h2>Images, most anomalous first</h2>")
    for rank, r in enumerate(scored, start=1):
        category = f" · class {esc(r.category)}" if r.category else ""
        decision = f" · <b>{esc(r.decision)}</b>" if r.decision else ""
        parts.append(
            f"<div class='card {esc(r.decision)}'><div class='meta'>#{rank} · score {r.score:.6g}{decision}"
            f"{category} · {esc(r.path)}</div>"
            f"<img class='overlay' src='{esc(r.overlay)}' alt='overlay of {esc(Path(r.path).name)}'></div>"
        )
    parts.append(f"<script>{_CHECK}</script></body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
