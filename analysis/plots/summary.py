"""The per-model summary figure: density at gamma per layer, and shared heads per layer.

Top panel: for each layer, the distribution over its heads of each head's coverage-mask density
at gamma (box plot with every head as a dot). Bottom panel: the share of the layer's heads that
belong to a shared cluster (from a clustering or lookup), or a note when none is given.
"""
from __future__ import annotations

import numpy as np
import torch

from ..files.records import AttentionRecord
from ..method.coverage import coverage_mask, density
from . import render
from .downsample import as_array


def head_densities(record: AttentionRecord, gamma: float) -> np.ndarray:
    """``[L, H]`` density of every head's coverage mask at ``gamma`` (one layer at a time)."""
    out = torch.empty(record.block_mass.shape[:2])
    for layer in range(record.block_mass.shape[0]):
        out[layer] = density(coverage_mask(record.block_mass[layer], gamma))
    return out.numpy()


def shared_head_matrix(clustering, num_layers: int, num_heads: int) -> np.ndarray:
    """``[L, H]`` bool: is the head in a shared cluster of ``clustering`` (a ``Clustering``)."""
    shared = np.zeros((num_layers, num_heads), dtype=bool)
    for cluster in clustering.shared_clusters:
        for layer, head in cluster.heads:
            shared[layer, head] = True
    return shared


def _layer_ticks(ax, num_layers: int) -> None:
    step = max(1, -(-num_layers // 20))
    ticks = np.arange(0, num_layers, step)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.tick_params(labelsize=7)


def _density_panel(ax, dens: np.ndarray, gamma: float) -> None:
    num_layers, num_heads = dens.shape
    layers = np.arange(num_layers)
    ax.boxplot(list(dens), positions=layers, widths=0.6, showfliers=False, patch_artist=True,
               boxprops={"facecolor": "#dce6f2", "edgecolor": "#4a6fa5", "linewidth": 0.7},
               medianprops={"color": "#1f3b66", "linewidth": 1.0},
               whiskerprops={"linewidth": 0.7}, capprops={"linewidth": 0.7})
    rng = np.random.default_rng(0)
    jitter = rng.uniform(-0.22, 0.22, size=dens.shape)
    size = 6 if num_heads <= 16 else 2
    ax.scatter((layers[:, None] + jitter).ravel(), dens.ravel(), s=size, color="#d1495b",
               alpha=0.6, lw=0, zorder=3, rasterized=True)
    ax.set_ylim(0, min(1.0, max(0.05, float(dens.max()) * 1.1)))
    ax.yaxis.set_major_formatter(_percent())
    ax.set_ylabel(f"density at gamma {gamma:g}\n(kept / causal blocks)", fontsize=8)
    ax.grid(axis="y", lw=0.4, alpha=0.5)


def _percent():
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(1.0, decimals=0)


def _shared_panel(ax, shared: np.ndarray | None, num_layers: int) -> None:
    if shared is None:
        ax.text(0.5, 0.5, "no clustering or lookup given: shared heads not shown",
                ha="center", va="center", fontsize=8, color="#666666", transform=ax.transAxes)
        ax.set_yticks([])
        return
    share = shared.mean(axis=1)
    ax.bar(np.arange(num_layers), share, width=0.7, color="#6a994e")
    ax.set_ylim(0, 1.0)
    ax.yaxis.set_major_formatter(_percent())
    ax.set_ylabel("heads in shared\nclusters", fontsize=8)
    ax.grid(axis="y", lw=0.4, alpha=0.5)


def summary_figure(densities, *, title: str, gamma: float, shared=None, shared_source: str = ""):
    """Two panels over layers; ``densities`` ``[L, H]``, ``shared`` ``[L, H]`` bool or None."""
    plt = render.pyplot()
    dens = as_array(densities).astype(np.float64)
    if dens.ndim != 2 or dens.size == 0:
        raise render.PlotError(f"densities must be a non-empty [layers, heads] array, got shape {dens.shape}")
    if shared is not None:
        shared = as_array(shared).astype(bool)
        if shared.shape != dens.shape:
            raise render.PlotError(f"shared-head matrix has shape {shared.shape}, expected {dens.shape}")
    num_layers = dens.shape[0]
    width = min(14.0, max(6.4, 0.3 * num_layers + 2.0))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(width, 5.6), sharex=True, layout="constrained",
                                      gridspec_kw={"height_ratios": [2.2, 1.0]})
    _density_panel(top, dens, gamma)
    _shared_panel(bottom, shared, num_layers)
    _layer_ticks(bottom, num_layers)
    bottom.set_xlabel("layer", fontsize=8)
    bottom.set_xlim(-0.7, num_layers - 0.3)
    stats = f"mean density {dens.mean():.1%} over {dens.size} heads"
    if shared is not None:
        stats += f"; {shared.mean():.0%} of heads shared" + (f" ({shared_source})" if shared_source else "")
    fig.suptitle(f"{title}\n{stats}", fontsize=9)
    return fig
