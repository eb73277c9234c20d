"""Figures of `sharedattn compare`: density against output error, and the passkey grid per method."""
from __future__ import annotations

from pathlib import Path

from ..evaluation.compare import CompareRow, pareto_front, passkey_cells
from .render import PlotError, pyplot, save_figure

METHOD_COLOURS = {
    "dense": "#7f7f7f",
    "a-shape": "#9467bd",
    "vertical-slash": "#1f77b4",
    "flexprefill": "#2ca02c",
    "shareprefill": "#d62728",
}
_MARKERS = "osD^vP*Xh<>"


def _points(rows: list[CompareRow]) -> list[CompareRow]:
    return [r for r in rows if r.method != "dense" and r.error_mean is not None]


def density_error_figure(rows: list[CompareRow], title: str, path: Path) -> Path:
    """One point per (method, prompt): density (x) against mean relative output error (y, log),
    the Pareto front (lower density and lower error are both better) drawn as a step line."""
    pts = _points(rows)
    if not pts:
        raise PlotError("no sparse-method rows with a measured output error to plot")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    prompts = sorted({r.prompt for r in pts})
    marker = {p: _MARKERS[i % len(_MARKERS)] for i, p in enumerate(prompts)}
    floor = min([r.error_mean for r in pts if r.error_mean > 0] or [1e-6]) / 3
    for method in dict.fromkeys(r.method for r in pts):
        for r in (r for r in pts if r.method == method):
            ax.scatter(r.density, max(r.error_mean, floor), color=METHOD_COLOURS.get(method, "black"),
                       marker=marker[r.prompt], s=36, alpha=0.85, edgecolors="none")
    coords = [(r.density, max(r.error_mean, floor)) for r in pts]
    front = [coords[i] for i in pareto_front(coords)]
    ax.step([x for x, _ in front], [y for _, y in front], where="post", color="black", lw=1,
            ls="--", label="Pareto front")
    ax.scatter([x for x, _ in front], [y for _, y in front], s=110, facecolors="none",
               edgecolors="black", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("density (kept / causal blocks)")
    ax.set_ylabel("relative error of attention outputs (mean over layers)")
    ax.set_title(title, fontsize=9)
    _legends(ax, [m for m in METHOD_COLOURS if any(r.method == m for r in pts)], prompts, marker)
    return save_figure(fig, path)


def _legends(ax, methods, prompts, marker) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", color=METHOD_COLOURS[m], label=m) for m in methods]
    handles += [Line2D([], [], ls="", marker=marker[p], color="#444444", label=p) for p in prompts[:10]]
    handles.append(Line2D([], [], ls="--", color="black", label="Pareto front"))
    ax.legend(handles=handles, fontsize=7, loc="best", framealpha=0.8)


def passkey_grid_figure(rows: list[CompareRow], title: str, path: Path) -> Path:
    """One panel per method: length (rows) x depth (columns), green where the greedy answer holds
    the pass key, red where not, grey where the grid has no such cell."""
    import numpy as np
    from matplotlib.colors import ListedColormap

    methods = list(dict.fromkeys(r.method for r in rows))
    cells = {m: passkey_cells(rows, m) for m in methods}
    keys = sorted({k for c in cells.values() for k in c})
    if not keys:
        raise PlotError("no passkey rows to plot")
    lengths = sorted({k[0] for k in keys})
    depths = sorted({k[1] for k in keys})
    plt = pyplot()
    fig, axes = plt.subplots(1, len(methods), figsize=(1.2 + 1.9 * len(methods), 1.5 + 0.42 * len(lengths)),
                             squeeze=False)
    cmap = ListedColormap(["#d9d9d9", "#d62728", "#2ca02c"])
    for ax, method in zip(axes[0], methods):
        grid = np.zeros((len(lengths), len(depths)))
        for (length, depth), ok in cells[method].items():
            grid[lengths.index(length), depths.index(depth)] = 2 if ok else 1
            ax.text(depths.index(depth), lengths.index(length), "ok" if ok else "x", ha="center",
                    va="center", fontsize=7, color="white")
        ax.imshow(grid, cmap=cmap, vmin=0, vmax=2, aspect="auto", interpolation="nearest")
        ax.set_title(method, fontsize=9)
        ax.set_xticks(range(len(depths)), [f"{d:g}" for d in depths], fontsize=7)
        ax.set_yticks(range(len(lengths)), [str(n) for n in lengths], fontsize=7)
        ax.set_xlabel("depth", fontsize=8)
    axes[0][0].set_ylabel("length (tokens)", fontsize=8)
    fig.suptitle(title, fontsize=9, y=1.04)
    return save_figure(fig, path)


def matched_curves_figure(curves, metric: str, title: str, path: Path) -> Path:
    """Each method's (density, ``metric``) points over compare runs, joined in density order and
    labelled with their gamma: the curves `sharedattn matched` reads baselines from."""
    drawn = [c for c in curves if any(getattr(p, metric) is not None for p in c.points)]
    if not drawn:
        raise PlotError(f"no curve has a measured {metric} to plot")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    seen: dict[str, int] = {}
    for i, c in enumerate(drawn):
        pts = [p for p in c.points if getattr(p, metric) is not None]
        ys = [max(getattr(p, metric), 1e-9) for p in pts]
        variant = seen[c.method] = seen.get(c.method, -1) + 1  # a method's second curve is dashed
        ax.plot([p.density for p in pts], ys, marker=_MARKERS[i % len(_MARKERS)], lw=1.2, ms=5,
                ls="--" if variant else "-", color=METHOD_COLOURS.get(c.method), label=c.label)
        for p, y in zip(pts, ys):
            if p.gamma is not None:
                ax.annotate(f"{p.gamma:g}", (p.density, y), textcoords="offset points", xytext=(3, 3), fontsize=6)
    ax.set_yscale("log")
    ax.set_xlabel("density (kept / causal blocks), mean over prompts")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
