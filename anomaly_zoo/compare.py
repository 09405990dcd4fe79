"""`python -m anomaly_zoo.compare REFERENCE OURS [row=NAME]`: the official numbers beside ours, per class and mean.

REFERENCE is one of
- an official OneNIP/UniAD test log (`checkpoints-v2/<model>/log/*.log` of github.com/gaobb/OneNIP: the last
  `| clsname | max_auc | max_ap | pixel_auc | pixel_ap |` table in it, values in %);
- what the official DIVAD `test.py` prints (`| clsname | max | pixel | pro | appx | apsp | f1px | f1sp |`, any
  column order, values in [0, 1]);
- a paper CSV (`row,<metric>,...` with the suite's metric names, values in %; experiments/*/paper.csv): rows named
  like our categories are compared with them, the row `mean` (or `row=NAME`) with our mean.
OURS is a results.json or the run folder holding it. Prints one Markdown table: per class and metric the reference,
ours and the difference (ours − reference, points), and says when the two were scored under different protocols.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from anomaly_zoo.metrics import METRIC_NAMES

#: Column names of the official tables → the suite's metric names.
ONENIP_COLUMNS = {"max_auc": "I-AUROC", "max_ap": "I-AP", "pixel_auc": "P-AUROC", "pixel_ap": "P-AP"}
DIVAD_COLUMNS = {"max": "I-AUROC", "pixel": "P-AUROC", "pro": "PRO", "appx": "P-AP", "apsp": "I-AP",
                 "f1px": "P-F1max", "f1sp": "I-F1max"}  # fmt: skip


class ReferenceFormatError(ValueError):
    """A reference file that is neither an official log nor a paper CSV."""


@dataclass
class Table:
    """Per row (class name or "mean") the metrics in %, and where they came from."""

    rows: dict[str, dict[str, float]]
    source: str
    protocol: str | None = None  # the evaluation protocol the numbers were computed under, where known


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def read_official_log(path: str | Path) -> Table:
    """The last per-class table of an official OneNIP/UniAD log or DIVAD test.py output."""
    path = Path(path)
    lines = path.read_text(errors="replace").splitlines()
    starts = [i for i, line in enumerate(lines) if line.lstrip().startswith("|") and "clsname" in _cells(line)]
    if not starts:
        first = next((f"line {i + 1}: {line.strip()[:80]!r}" for i, line in enumerate(lines) if line.strip()), "empty")
        raise ReferenceFormatError(
            f"{path}: not an official test log (no '| clsname | ...' table; {first}); pass the log of the official "
            "test (OneNIP: checkpoints-v2/<model>/log/*.log), DIVAD test.py's output, or a paper CSV"
        )
    start = starts[-1]
    header = _cells(lines[start])[1:]
    known = {**ONENIP_COLUMNS, **DIVAD_COLUMNS}
    unknown = [h for h in header if h not in known]
    if unknown:
        raise ReferenceFormatError(f"{path}: line {start + 1}: unknown column(s) {unknown} (known: {', '.join(known)})")
    percent_columns = all(h in ONENIP_COLUMNS for h in header)
    rows: dict[str, dict[str, float]] = {}
    for number in range(start + 2, len(lines)):  # after the header and its |:---:| line
        line = lines[number]
        if not line.lstrip().startswith("|"):
            break
        cells = _cells(line)
        try:
            if len(cells) != len(header) + 1:
                raise ValueError(f"{len(cells)} cells, the header has {len(header) + 1}")
            rows[cells[0]] = {known[h]: float(v) for h, v in zip(header, cells[1:], strict=True)}
        except ValueError as err:
            problem = f"{path}: line {number + 1} could not be read ({err}): {line.strip()!r}"
            raise ReferenceFormatError(problem) from None
    if not rows:
        raise ReferenceFormatError(f"{path}: line {start + 1}: a table header without rows")
    # OneNIP writes %, DIVAD fractions (its values never exceed 1)
    if not percent_columns and all(v <= 1.0 for row in rows.values() for v in row.values()):
        rows = {name: {m: 100 * v for m, v in row.items()} for name, row in rows.items()}
    protocol = "onenip_official" if percent_columns else ("divad_official" if "pro" in header else None)
    return Table(rows, f"official test log {path}", protocol)


def read_paper_csv(path: str | Path) -> Table:
    """`row,<metric>,...` (values in %): a paper's table as the experiments/ folders keep it."""
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if "row" not in fields or not any(m in fields for m in METRIC_NAMES):
            raise ReferenceFormatError(
                f"{path}: line 1: a paper CSV needs a 'row' column and metric columns ({', '.join(METRIC_NAMES)}); "
                f"got {fields}"
            )
        rows: dict[str, dict[str, float]] = {}
        for number, record in enumerate(reader, start=2):
            try:
                rows[record["row"]] = {m: float(record[m]) for m in METRIC_NAMES if record.get(m) not in (None, "")}
            except ValueError as err:
                raise ReferenceFormatError(f"{path}: line {number} could not be read ({err})") from None
    return Table(rows, f"paper CSV {path}")


def read_reference(path: str | Path) -> Table:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (an official test log or a paper CSV)")
    return read_paper_csv(path) if path.suffix.lower() == ".csv" else read_official_log(path)


def read_results(path: str | Path) -> Table:
    """Our numbers (in %) from a results.json or the run folder that holds it."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no results.json (pass a run folder or its results.json)")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from None
    if data.get("status", "ok") != "ok":
        raise ValueError(f"{file}: the run failed ({data.get('error', 'no detail')}); nothing to compare")

    def percent(row: dict) -> dict[str, float]:
        return {m: 100 * float(v) for m, v in row.items() if v is not None and m in METRIC_NAMES}

    rows = {name: percent(row) for name, row in data.get("categories", {}).items()}
    rows["mean"] = percent(data.get("mean", {}))
    return Table(rows, str(file), str((data.get("evaluation") or {}).get("protocol", "exact")))


def comparison(reference: Table, ours: Table, mean_row: str | None = None) -> str:
    """A Markdown table: per class of either side (then the mean) and per metric both have, theirs / ours / Δ."""
    theirs = dict(reference.rows)
    if mean_row is not None:
        if mean_row not in theirs:
            raise KeyError(f"row={mean_row!r} is not a row of the {reference.source} (rows: {', '.join(theirs)})")
        theirs["mean"] = theirs.pop(mean_row)
    metrics = [m for m in METRIC_NAMES
               if any(m in r for r in theirs.values()) and any(m in r for r in ours.rows.values())]  # fmt: skip
    if not metrics:
        raise ValueError(f"{reference.source} and {ours.source} have no metric in common")
    names = [n for n in theirs if n != "mean" and n in ours.rows]
    # with row=NAME the reference's other rows are other tables' (datasets, settings), not missing classes
    only = [] if mean_row is not None else sorted((set(theirs) ^ set(ours.rows)) - {"mean"})
    lines = [f"reference: {reference.source}" + (f" (protocol {reference.protocol})" if reference.protocol else ""),
             f"ours: {ours.source} (protocol {ours.protocol})"]  # fmt: skip
    if reference.protocol and ours.protocol and reference.protocol != ours.protocol:
        lines.append(
            f"NOTE: the reference was computed as {reference.protocol}, ours as {ours.protocol}: rerun the test with "
            f"evaluation.protocol={reference.protocol} to compare like with like"
        )
    if only:
        lines.append(f"classes on one side only (left out): {', '.join(only)}")
    lines += ["", "| class | " + " | ".join(f"{m} ref / ours / Δ" for m in metrics) + " |",
              "|---|" + "---|" * len(metrics)]  # fmt: skip
    for name in [*names, "mean"]:
        if name not in theirs or name not in ours.rows:
            continue
        cells = []
        for m in metrics:
            a, b = theirs[name].get(m), ours.rows[name].get(m)
            cells.append("" if a is None or b is None else f"{a:.1f} / {b:.1f} / {b - a:+.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    options = dict(a.split("=", 1) for a in args if re.match(r"^row=", a))
    paths = [a for a in args if not a.startswith("row=")]
    if len(paths) != 2:
        raise SystemExit(__doc__)
    try:
        print(comparison(read_reference(paths[0]), read_results(paths[1]), options.get("row")))
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
