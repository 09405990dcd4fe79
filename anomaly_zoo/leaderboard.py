"""`python -m anomaly_zoo.leaderboard <folders...> [out=DIR] [logger=wandb] [project=...] [entity=...]`

Collects every results.json below the folders (a sweep directory, several run folders) into per-dataset
leaderboards: leaderboard_<dataset>.md and .csv in `out` (default: the first folder); runs scored under an official
evaluation protocol (results.json `evaluation.protocol`) get their own leaderboard_<dataset>_<protocol> files.
"""

from __future__ import annotations

import sys

from anomaly_zoo.reporting.leaderboard import collect_runs, log_to_wandb, write_leaderboards


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    options = dict(a.split("=", 1) for a in args if "=" in a)
    folders = [a for a in args if "=" not in a]
    unknown = set(options) - {"out", "logger", "project", "entity"}
    if not folders or unknown:
        raise SystemExit(__doc__ + (f"\nunknown option(s): {sorted(unknown)}" if unknown else ""))
    unreadable: list[str] = []
    try:
        runs = collect_runs(folders, unreadable)
    except FileNotFoundError as err:
        _report_unreadable(unreadable)
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    out = options.get("out", folders[0])
    for path in write_leaderboards(runs, out):
        print(path)
        if path.suffix == ".md":  # the mean table on the terminal; per-category tables stay in the file
            text = path.read_text()
            cut = text.find("\n### ", text.find("### ") + 1)
            print("\n" + (text if cut < 0 else text[:cut]).strip() + "\n")
    if options.get("logger") == "wandb":
        print("wandb:", log_to_wandb(runs, options.get("project", "anomaly_zoo"), options.get("entity"), out))
    _report_unreadable(unreadable)


def _report_unreadable(unreadable: list[str]) -> None:
    """One line per results.json left out, after the tables (so the terminal ends with them)."""
    for line in unreadable:
        print(f"unreadable, left out: {line}", file=sys.stderr)


if __name__ == "__main__":
    main()
