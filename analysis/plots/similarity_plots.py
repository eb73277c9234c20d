"""Pictures of head-by-head similarity: the matrix, the clustermap, and the cross-input scatter.

All three take plain ``[P, P]`` matrices (``P = L * H`` heads, layer-major, as
``similarity.similarity_matrix`` returns them), so callers choose the metric and aggregation.
"""
from __future__ import annotations

import numpy as np

from . import render
from .downsample import as_array

CLUSTERMAP_MAX_HEADS = 1100  # a 1024-head model still fits; beyond that the figure is unreadable
SCATTER_MAX_POINTS = 60_000  # above this the cross-input view is a 2-D histogram instead


def check_matrix(sim, num_layers: int, num_heads: int) -> np.ndarray:
    """``sim`` as a float64 ``[P, P]`` array; ``PlotError`` if it does not fit L x H heads."""
    m = as_array(sim).astype(np.float64)
    p = num_layers * num_heads
    if m.shape != (p, p):
        raise render.PlotError(f"similarity matrix has shape {m.shape}, expected ({p}, {p}) "
                               f"for {num_layers} layers x {num_heads} heads")
    return np.nan_to_num(m, nan=0.0)


def layer_tick_step(num_layers: int, max_labels: int = 16) -> int:
    return max(1, -(-num_layers // max_labels))


def similarity_figure(sim, num_layers: int, num_heads: int, *, title: str, metric: str):
    """The ``[P, P]`` matrix ordered by layer, thin lines at layer boundaries, layer ticks."""
    plt = render.pyplot()
    m = check_matrix(sim, num_layers, num_heads)
    p = m.shape[0]
    fig, ax = plt.subplots(figsize=(6.6, 5.9), layout="constrained")
    image = ax.imshow(m, cmap=render.SIMILARITY_CMAP, vmin=0.0, vmax=1.0, interpolation="nearest")
    if num_layers > 1:
        edges = np.arange(1, num_layers) * num_heads - 0.5
        width = 0.5 if num_layers <= 40 else 0.25
        ax.vlines(edges, -0.5, p - 0.5, colors="white", linewidths=width, alpha=0.7)
        ax.hlines(edges, -0.5, p - 0.5, colors="white", linewidths=width, alpha=0.7)
    step = layer_tick_step(num_layers)
    layers = np.arange(0, num_layers, step)
    centres = layers * num_heads + (num_heads - 1) / 2
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_ticks(centres)
        axis.set_ticklabels([f"L{layer}" for layer in layers])
    ax.tick_params(labelsize=7, length=2)
    ax.set_xlabel(f"head (layer-major, {num_heads} per layer)", fontsize=8)
    ax.set_ylabel("head", fontsize=8)
    bar = fig.colorbar(image, ax=ax, shrink=0.8)
    bar.set_label(f"similarity ({metric})", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=8.5)
    return fig


def display_linkage(sim: np.ndarray, method: str = "average") -> np.ndarray:
    """Hierarchical clustering tree of ``1 - sim`` (the same distance as ``clustering``)."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    d = np.clip(1.0 - 0.5 * (sim + sim.T), 0.0, 1.0)
    np.fill_diagonal(d, 0.0)
    return linkage(squareform(d, checks=False), method=method)


def layer_colours(num_layers: int, num_heads: int) -> list:
    """One RGBA colour per head, by layer, from a sequential colour map."""
    plt = render.pyplot()
    cmap = plt.get_cmap(render.LAYER_CMAP)
    return [cmap(layer / max(num_layers - 1, 1)) for layer in range(num_layers) for _ in range(num_heads)]


def clustermap_figure(sim, num_layers: int, num_heads: int, *, title: str, metric: str,
                      method: str = "average"):
    """seaborn clustermap of the matrix: dendrograms and a layer colour strip on both sides."""
    import seaborn as sns

    from ..offline.similarity import head_labels

    render.pyplot()
    m = check_matrix(sim, num_layers, num_heads)
    p = m.shape[0]
    if p > CLUSTERMAP_MAX_HEADS:
        raise render.PlotError(f"{p} heads are too many for a readable clustermap (at most "
                               f"{CLUSTERMAP_MAX_HEADS}); use the similarity matrix view")
    tree = display_linkage(m, method)
    colours = layer_colours(num_layers, num_heads)
    labels = head_labels(num_layers, num_heads)
    every = max(1, -(-p // 60))  # at most ~60 tick labels
    import pandas as pd

    frame = pd.DataFrame(m, index=labels, columns=labels)
    grid = sns.clustermap(frame, row_linkage=tree, col_linkage=tree, row_colors=colours, col_colors=colours,
                          cmap=render.SIMILARITY_CMAP, vmin=0.0, vmax=1.0, figsize=(9.0, 9.0),
                          xticklabels=every, yticklabels=every, dendrogram_ratio=0.14,
                          colors_ratio=0.025, rasterized=True, cbar_pos=(0.02, 0.95, 0.11, 0.012),
                          cbar_kws={"orientation": "horizontal"})
    grid.ax_cbar.set_title(f"similarity ({metric})", fontsize=7)
    grid.ax_cbar.tick_params(labelsize=6)
    grid.ax_heatmap.tick_params(labelsize=5 if p > 100 else 7, length=1)
    grid.ax_heatmap.set_xlabel("")
    grid.ax_heatmap.set_ylabel("")
    _layer_legend(grid.figure, num_layers)
    grid.figure.suptitle(title + f"\n{method} linkage on 1 - similarity; colour strip = layer",
                         fontsize=8.5, y=1.04)
    return grid.figure


def _layer_legend(fig, num_layers: int) -> None:
    """A small horizontal colour bar that reads the layer strip."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    plt = render.pyplot()
    cax = fig.add_axes((0.02, 0.895, 0.11, 0.012))
    mappable = ScalarMappable(norm=Normalize(0, max(num_layers - 1, 1)), cmap=plt.get_cmap(render.LAYER_CMAP))
    bar = fig.colorbar(mappable, cax=cax, orientation="horizontal")
    bar.ax.set_title("layer", fontsize=7)
    bar.ax.tick_params(labelsize=6)


def upper_pairs(a: np.ndarray, b: np.ndarray, num_heads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Strict upper-triangle values of both matrices and a same-layer flag per pair."""
    p = a.shape[0]
    rows, cols = np.triu_indices(p, k=1)
    same = (rows // num_heads) == (cols // num_heads)
    return a[rows, cols], b[rows, cols], same


def pair_correlations(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(Pearson r, Spearman rho); 0.0 where undefined (a constant side)."""
    from scipy.stats import pearsonr, spearmanr

    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return 0.0, 0.0
    r = float(pearsonr(x, y).statistic)
    rho = float(spearmanr(x, y).statistic)
    return (r if r == r else 0.0), (rho if rho == rho else 0.0)


def across_figure(sim_a, sim_b, num_layers: int, num_heads: int, *, label_a: str, label_b: str,
                  title: str, metric: str):
    """Each head pair's similarity under prompt A (x) against prompt B (y), with correlations."""
    plt = render.pyplot()
    a = check_matrix(sim_a, num_layers, num_heads)
    b = check_matrix(sim_b, num_layers, num_heads)
    x, y, same = upper_pairs(a, b, num_heads)
    r, rho = pair_correlations(x, y)
    fig, ax = plt.subplots(figsize=(5.6, 5.3), layout="constrained")
    if x.size > SCATTER_MAX_POINTS:
        hb = ax.hexbin(x, y, gridsize=70, bins="log", cmap="Greys", extent=(0, 1, 0, 1), mincnt=1)
        fig.colorbar(hb, ax=ax, shrink=0.7).set_label("pairs per cell (log)", fontsize=8)
    else:
        ax.scatter(x[~same], y[~same], s=3, alpha=0.25, color="#3b6ea8", lw=0, rasterized=True,
                   label=f"different layers ({int((~same).sum()):,})")
        ax.scatter(x[same], y[same], s=6, alpha=0.6, color="#d1495b", lw=0, rasterized=True,
                   label=f"same layer ({int(same.sum()):,})")
        ax.legend(loc="upper left", fontsize=7, markerscale=2.5, frameon=False)
    ax.plot([0, 1], [0, 1], color="#888888", lw=0.8, ls="--")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel(f"similarity under A: {render.shorten(label_a, 50)}", fontsize=8)
    ax.set_ylabel(f"similarity under B: {render.shorten(label_b, 50)}", fontsize=8)
    ax.tick_params(labelsize=7)
    stats = f"{x.size:,} head pairs; Pearson r = {r:.3f}, Spearman rho = {rho:.3f}"
    ax.set_title(f"{title}\n{stats}", fontsize=8.5)
    return fig
