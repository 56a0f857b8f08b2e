"""PNG plots of a profile, with matplotlib (an optional dependency: ``pip install 'actkit[report]'``).

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas, never through ``pyplot``: no global figure
state, no display needed, safe to call from a server. Every plot takes the profile dict (`actkit.observe.profile`)
and draws one quantity per block, so a reader sees at a glance where along the depth something changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The plot files, in the order the HTML report shows them.
PLOT_FILES = ["norms.png", "magnitudes.png", "sparsity.png", "signal.png"]

INSTALL_HINT = "pip install 'actkit[report]'"


class MissingMatplotlib(RuntimeError):
    """matplotlib is not installed; the message says how to install it."""


def _figure() -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingMatplotlib(f"plots skipped: matplotlib is not installed ({INSTALL_HINT})") from None
    fig = Figure(figsize=(7.5, 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _values(layers: list[dict[str, Any]], get: Callable[[dict[str, Any]], Any]) -> list[float]:
    """One value per block; missing or non-positive values become NaN (a gap on a log axis)."""
    out = []
    for layer in layers:
        try:
            v = get(layer)
        except (KeyError, IndexError, TypeError):
            v = None
        out.append(float(v) if isinstance(v, (int, float)) and v is not None and math.isfinite(v) else math.nan)
    return out


def _field(*path: str | int) -> Callable[[dict[str, Any]], Any]:
    """A getter for ``layer[path[0]][path[1]]...``, bound now (a lambda in a loop would see the last key)."""
    def get(layer: dict[str, Any]) -> Any:
        value: Any = layer
        for step in path:
            value = value[step]
        return value
    return get


def _log_safe(values: list[float]) -> list[float]:
    return [v if v > 0 else math.nan for v in values]


def _any(values: list[float]) -> bool:
    return any(v == v for v in values)


def _axes(fig: Any, title: str, ylabel: str, log: bool = True) -> Any:
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("block")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(True, which="major", alpha=0.3)
    return ax


def _blocks(layers: list[dict[str, Any]]) -> list[int]:
    return [int(layer["index"]) for layer in layers]


def plot_norms(result: dict[str, Any], path: Path) -> bool:
    """Residual-stream norms (mean, p50, p99, max) and the mean norms of what attention and MLP add."""
    layers = result["layers"]
    x = _blocks(layers)
    fig = _figure()
    ax = _axes(fig, f"L2 norms per token: {result['model']}", "L2 norm")
    for key, style in (("resid_norm_max", ":"), ("resid_norm_p99", "--"), ("resid_norm_mean", "-"),
                       ("resid_norm_p50", "-.")):
        ax.plot(x, _log_safe(_values(layers, _field(key))), style, marker="o", markersize=3,
                label=key.replace("resid_norm_", "resid_post "))
    for key in ("attn_out_norm_mean", "mlp_out_norm_mean"):
        values = _log_safe(_values(layers, _field(key)))
        if _any(values):
            ax.plot(x, values, marker="s", markersize=3, label=key.replace("_norm_", " "))
    ax.legend(fontsize=8)
    fig.savefig(path)
    return True


def plot_magnitudes(result: dict[str, Any], path: Path) -> bool:
    """The three largest entry magnitudes and the median magnitude of each block's output (Sun et al., Fig. 1)."""
    layers = result["layers"]
    x = _blocks(layers)
    fig = _figure()
    ax = _axes(fig, "Largest and median |activation| of resid_post", "|x|")
    for rank in range(3):
        values = _log_safe(_values(layers, _field("magnitude", "top", rank)))
        ax.plot(x, values, marker="o", markersize=3, label=f"top {rank + 1}")
    ax.plot(x, _log_safe(_values(layers, lambda la: la["magnitude"]["median"])), "k--", marker=".",
            label="median")
    ratios = result.get("settings", {}).get("massive_ratios", [])
    if ratios:
        medians = _log_safe(_values(layers, lambda la: la["magnitude"]["median"]))
        ax.plot(x, [m * ratios[0] for m in medians], color="grey", alpha=0.5, linewidth=1,
                label=f"{ratios[0]:g} x median")
    ax.legend(fontsize=8)
    fig.savefig(path)
    return True


def plot_sparsity(result: dict[str, Any], path: Path) -> bool:
    """Fraction of near-zero MLP hidden entries, and the fractions of dead and always-on neurons."""
    layers = result["layers"]
    x = _blocks(layers)
    near = _values(layers, lambda la: la["sparsity"]["near_zero_fraction"])
    if not _any(near):
        return False
    dead = _values(layers, lambda la: la["sparsity"]["dead"] / la["sparsity"]["neurons"])
    on = _values(layers, lambda la: la["sparsity"]["always_on"] / la["sparsity"]["neurons"])
    eps = result.get("settings", {}).get("sparsity_eps")
    fig = _figure()
    ax = _axes(fig, f"MLP hidden activity (near zero: |x| <= {eps:g} x token RMS)" if eps else "MLP hidden activity",
               "fraction", log=False)
    ax.plot(x, near, marker="o", markersize=3, label="near-zero entries")
    ax.plot(x, dead, marker="v", markersize=3, label="dead neurons (never active)")
    ax.plot(x, on, marker="^", markersize=3, label="always-on neurons")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.savefig(path)
    return True


def plot_signal(result: dict[str, Any], path: Path) -> bool:
    """Signal propagation (Brock et al., 2021): average squared channel mean and average channel variance."""
    layers = result["layers"]
    x = _blocks(layers)
    fig = _figure()
    ax = _axes(fig, "Signal propagation of resid_post", "average over channels")
    ax.plot(x, _log_safe(_values(layers, lambda la: la["signal"]["channel_mean_sq"])), marker="o", markersize=3,
            label="squared channel mean")
    ax.plot(x, _log_safe(_values(layers, lambda la: la["signal"]["channel_var"])), marker="s", markersize=3,
            label="channel variance")
    ax.legend(fontsize=8)
    fig.savefig(path)
    return True


_PLOTS: dict[str, Callable[[dict[str, Any], Path], bool]] = {
    "norms.png": plot_norms,
    "magnitudes.png": plot_magnitudes,
    "sparsity.png": plot_sparsity,
    "signal.png": plot_signal,
}


def write_plots(result: dict[str, Any], folder: str | Path) -> list[str]:
    """Draw every plot that has data into `folder`.

    Returns:
        The file names written, in report order (a plot without data, such as sparsity on a model without an
        ``mlp_hidden`` site, is left out).

    Raises:
        MissingMatplotlib: when matplotlib is not installed.
    """
    _figure()  # fail early, before any file is written
    out = []
    for name in PLOT_FILES:
        if _PLOTS[name](result, Path(folder) / name):
            out.append(name)
    return out


__all__ = ["INSTALL_HINT", "PLOT_FILES", "MissingMatplotlib", "plot_magnitudes", "plot_norms", "plot_signal",
           "plot_sparsity", "write_plots"]
