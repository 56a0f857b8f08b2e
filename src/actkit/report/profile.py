"""The profile report: ``profile.json``, PNG plots and a static ``report.html``, written as one unit.

An application over the observe pillar: `actkit.observe.profile` computes the numbers, this module renders them
(`plots` needs matplotlib; without it the HTML page is written with the numbers only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actkit.io import check_writable, make_folder, publish, staging, to_json
from actkit.observe.profile import PROFILE_FILE
from actkit.report import html, plots

REPORT_FILE = "report.html"


@dataclass
class Report:
    """What `write_report` wrote: the files, in the out folder, and why plots were skipped (None if they weren't)."""

    files: list[Path]
    skipped: str | None = None


def write_report(result: dict[str, Any], out_dir: str | Path, *, overwrite: bool = False) -> Report:
    """Write ``profile.json``, the plots (PNG) and ``report.html`` that shows them, into `out_dir`.

    Everything is rendered into a hidden staging folder inside `out_dir` first and then moved into place file by
    file (each move atomic), so a failure while rendering leaves `out_dir` as it was. Without matplotlib the plots
    are skipped (`Report.skipped` says how to install it) and the JSON and HTML are still written.

    Arguments:
        result: what `profile` returned.
        out_dir: the folder; created if missing.
        overwrite: replace existing report files (the CLI's ``--force``); otherwise any of them is an error.

    Returns:
        A `Report` with the paths written.
    """
    folder = Path(out_dir)
    check_writable(folder, report_files(), overwrite=overwrite)
    make_folder(folder)
    with staging(folder) as stage:
        try:
            images = plots.write_plots(result, stage)
            skipped = None
        except plots.MissingMatplotlib as error:
            images, skipped = [], str(error)
        (stage / REPORT_FILE).write_text(html.render(result, images, skipped), encoding="utf-8")
        (stage / PROFILE_FILE).write_text(to_json(result) + "\n", encoding="utf-8")
        return Report(publish(stage, folder, [*images, REPORT_FILE, PROFILE_FILE]), skipped)


def report_files() -> list[str]:
    """Names `write_report` may write: the JSON, the HTML page and every plot."""
    return [PROFILE_FILE, REPORT_FILE, *plots.PLOT_FILES]




__all__ = ["REPORT_FILE", "Report", "report_files", "write_report"]
