"""The heatmap of a patching result: blocks down, positions (or heads) across, effect as a diverging colour."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actkit.report.plots import _figure


def plot_effects(result: dict[str, Any], path: Path) -> None:
    """Draw ``result`` (the dict of `PatchResult.to_dict`) to a PNG at `path`; zero is white."""
    effects = result["effects"]
    fig = _figure()
    columns = len(effects[0]) if effects else 0
    fig.set_size_inches(max(5.0, 0.5 * columns + 2.5), max(3.0, 0.4 * len(effects) + 1.8))
    ax = fig.add_subplot()
    limit = max((abs(v) for row in effects for v in row), default=0.0) or 1.0
    image = ax.imshow(effects, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, label=f"effect on {result['metric']}")
    ax.set_yticks(range(len(effects)), [str(i) for i in result["layers"]])
    ax.set_ylabel("block")
    if result["columns"] == "position":
        ax.set_xticks(range(columns), [repr(t)[1:-1] for t in result["tokens"]], rotation=60, ha="right",
                      fontsize=8)
    else:
        ax.set_xticks(range(columns), [str(h) for h in range(columns)])
        ax.set_xlabel("head")
    ax.set_title(f"{result['method']} patching of {result['site']} ({result['direction']}): "
                 f"clean {result['clean_metric']:.3g}, corrupt {result['corrupt_metric']:.3g}", fontsize=9)
    fig.savefig(path)
