"""Write a lab report from its committed results: ``python -m sysout.lab.report <results>``.

``<results>`` is the folder :mod:`sysout.lab.sweep` fills as runs finish
(``docs/results/massive-lab`` or ``docs/results/sink-lab``). The report (``<results>.md``,
beside the folder) and its figures (in the folder) are written from those files alone, so
anyone can regenerate the committed report from the committed data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sysout.lab import massive_report, sink_report
from sysout.lab.runs import ROOT, load_results

WRITERS = {"massive_lab": massive_report.write_report, "sink_lab": sink_report.write_report}


def write_report(results: Path, md: Path | None = None) -> Path:
    """The report of the runs under ``results`` (one experiment), to ``md`` (default: the
    folder's name with ``.md``, beside it)."""
    runs = load_results(results)
    experiments = {r.meta.get("experiment") for r in runs}
    if len(experiments) != 1 or not experiments <= set(WRITERS):
        raise SystemExit(
            f"{results}: expected the runs of one lab experiment ({', '.join(WRITERS)}), found "
            f"{sorted(map(str, experiments))}"
        )
    writer = WRITERS[experiments.pop()]
    return writer(runs, results, md or results.with_suffix(".md"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "results", nargs="?", type=Path, default=ROOT / "docs" / "results" / "massive-lab"
    )
    parser.add_argument("--md", type=Path, default=None, help="default: <results>.md")
    args = parser.parse_args(argv)
    print(write_report(args.results, args.md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
