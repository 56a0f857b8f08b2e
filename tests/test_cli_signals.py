"""SIGTERM (what ``timeout`` and job schedulers send) ends a command like Ctrl-C: temporaries removed, ``--out`` as
it was before the run, exit status 143.

Each test runs the real ``actkit`` entry point in a subprocess that holds still at the worst moment, while a
temporary file or folder of `actkit.io` exists next to or inside ``--out``, and sends it SIGTERM there.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from actkit.cli_common import TERMINATED

from cli_helpers import listing, terminate_when_held

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name == "nt", reason="POSIX signals")

#: Runs ``actkit ARGS``; first patches one function so that the run says HELD on stderr and sleeps inside it.
DRIVER = """
import sys, time
hold = sys.argv.pop(1)

def holding(real):
    def held(*args, **kwargs):
        if hold == "after":
            real(*args, **kwargs)
        print("HELD", file=sys.stderr, flush=True)
        time.sleep(300)
    return held

if hold == "after":  # inside the checkpoint's temporary folder, once the weights are written there
    import transformers
    transformers.PreTrainedModel.save_pretrained = holding(transformers.PreTrainedModel.save_pretrained)
else:  # inside the report's staging folder, every file rendered, none published
    import actkit.report.profile as report
    report.publish = holding(report.publish)

from actkit.cli import main
main()
"""


def _terminate_while_held(tmp_path: Path, hold: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``actkit ARGS`` in `tmp_path`, wait until it holds, send SIGTERM; the finished process."""
    return terminate_when_held(DRIVER, [hold, *args], tmp_path)


def test_prune_weights_sigterm_keeps_the_old_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "pruned"
    out.mkdir()
    (out / "config.json").write_text('{"an": "earlier run"}')
    before = listing(tmp_path)
    done = _terminate_while_held(tmp_path, "after", "prune", "weights", "--out", "pruned", "--force",
                                 "--method", "magnitude", "--sparsity", "0.5", "--eval-documents", "0")
    assert done.returncode == TERMINATED, done.stderr
    assert "error: terminated by SIGTERM" in done.stderr
    assert "Traceback" not in done.stderr
    assert listing(tmp_path) == before  # no .pruned.*.partial beside it, the old checkpoint untouched


def test_prune_experts_sigterm_leaves_no_folder(tmp_path: Path) -> None:
    done = _terminate_while_held(tmp_path, "after", "prune", "experts", "--out", "smaller", "--keep", "0.5",
                                 "--calibration-documents", "4", "--eval-documents", "0")
    assert done.returncode == TERMINATED, done.stderr
    assert "Traceback" not in done.stderr
    assert listing(tmp_path) == {}


def test_profile_sigterm_leaves_no_report_folder(tmp_path: Path) -> None:
    done = _terminate_while_held(tmp_path, "publish", "profile", "--max-tokens", "40", "--out", "new/report")
    assert done.returncode == TERMINATED, done.stderr
    assert listing(tmp_path) == {}  # neither the staging folder nor the folders made for it


def test_profile_sigterm_keeps_an_earlier_report(tmp_path: Path) -> None:
    out = tmp_path / "report"
    out.mkdir()
    (out / "profile.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    before = listing(tmp_path)
    done = _terminate_while_held(tmp_path, "publish", "profile", "--max-tokens", "40", "--out", "report",
                                 "--force")
    assert done.returncode == TERMINATED, done.stderr
    assert listing(tmp_path) == before  # no .actkit-*.tmp staging folder inside it
