"""Block-mass heatmaps: one head, or a layer's heads as one grid, with bool mask overlays.

Maps are drawn on a log colour scale (attention mass spans many decades), with token axes
(and block axes on single-head figures), pooled for display by ``downsample.row_pool`` when
the map is larger than the figure can show. Any bool block mask can be outlined on top
(``MaskOverlay``): the coverage mask at gamma, the pivotal pattern a head would share, or, once
prefill exists, the mask a method chose; the title then gives its density and covered mass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..files.records import AttentionRecord
from ..method.coverage import coverage_mask, density
from . import render
from .choices import MaskKind  # noqa: F401 - re-exported
from .downsample import (
    any_pool,
    as_array,
    format_tokens,
    log_range,
    outline_segments,
    pool_factor,
    row_pool,
    sparse_ticks,
)

SINGLE_MAX_CELLS = 256  # a single head shows at most 256 x 256 cells
GRID_MAX_CELLS = 96  # each panel of a grid at most 96 x 96


@dataclass(frozen=True)
class MaskOverlay:
    """A bool block mask ``[nqb, nkb]`` to outline, and the words that name it in titles."""
    mask: np.ndarray
    label: str  # full words for a single-head title
    short: str = ""  # a few characters for a grid panel's title (e.g. the pivot's name)


def check_layer(record: AttentionRecord, layer: int) -> None:
    num = record.meta.model.num_layers
    if not 0 <= layer < num:
        raise render.PlotError(f"layer {layer} is out of range: this record has layers 0-{num - 1}")
    bm = record.block_mass[layer]
    if not bool(torch.isfinite(bm).all()) or float(bm.abs().sum()) == 0.0:
        raise render.PlotError(f"the record holds no attention for layer {layer} "
                               f"(its maps are empty or not finite); capture that layer again")


def check_head(record: AttentionRecord, head: int) -> None:
    num = record.meta.model.num_heads
    if not 0 <= head < num:
        raise render.PlotError(f"head {head} is out of range: this model has heads 0-{num - 1} per layer")


def covered_mass(block_mass, mask) -> float:
    """Share of the map's total mass that falls in the mask's kept blocks."""
    m = np.nan_to_num(as_array(block_mass).astype(np.float64)).clip(min=0.0)
    total = m.sum()
    return float((m * as_array(mask).astype(bool)).sum() / total) if total > 0 else 0.0


def overlay_stats(block_mass, overlay: MaskOverlay) -> tuple[float, float]:
    """(density, covered mass) of an overlay on a map."""
    dens = float(density(torch.from_numpy(np.ascontiguousarray(overlay.mask.astype(bool)))))
    return dens, covered_mass(block_mass, overlay.mask)


def overlay_caption(block_mass, overlay: MaskOverlay) -> str:
    dens, mass = overlay_stats(block_mass, overlay)
    return f"{overlay.label}: density {dens:.1%}, covered mass {mass:.1%}"


def coverage_overlay(block_mass: torch.Tensor, gamma: float) -> MaskOverlay:
    """The head's own coverage mask at ``gamma`` (the paper's sparse pattern)."""
    return MaskOverlay(coverage_mask(block_mass, gamma).numpy(), f"coverage mask at gamma {gamma:g}")


def pivotal_head(clustering, layer: int, head: int) -> tuple[tuple[int, int], int] | None:
    """(pivotal (layer, head), cluster id) of the shared cluster holding ``(layer, head)``.

    The pivotal head is the first member met in a forward pass: lowest layer, then lowest head.
    ``clustering`` is a ``clustering.Clustering``; None when the head is in no shared cluster.
    """
    for cluster in clustering.shared_clusters:
        if (layer, head) in cluster.heads:
            return min(cluster.heads), cluster.id
    return None


def shared_overlay(record: AttentionRecord, clustering, layer: int, head: int,
                   gamma: float) -> MaskOverlay | None:
    """The pivotal pattern that ``(layer, head)`` would share, or None if it is not shared."""
    found = pivotal_head(clustering, layer, head)
    if found is None:
        return None
    (pl, ph), cid = found
    mask = coverage_mask(record.block_mass[pl, ph], gamma).numpy()
    if (pl, ph) == (layer, head):
        note = "pivotal itself"
    elif pl == layer:
        note = "same layer: would use its own pattern"
    else:
        note = "shared"
    return MaskOverlay(mask, f"pivotal pattern of L{pl}H{ph}, cluster {cid} ({note}), gamma {gamma:g}",
                       short=f"<-L{pl}H{ph}")


def _set_token_axes(ax, rows_tokens: float, cols_tokens: float, *, left: bool, bottom: bool) -> None:
    for axis, span, show in ((ax.xaxis, cols_tokens, bottom), (ax.yaxis, rows_tokens, left)):
        ticks = sparse_ticks(span, 5)
        axis.set_ticks(ticks)
        axis.set_ticklabels([format_tokens(t) for t in ticks] if show else [])
    ax.tick_params(labelsize=7, length=2)


def _add_block_axes(ax, block_size: int, num_blocks: int) -> None:
    """Secondary axes (top, right) in blocks."""
    ticks = sparse_ticks(num_blocks, 5)
    convert = (lambda t: t / block_size, lambda b: b * block_size)
    top = ax.secondary_xaxis("top", functions=convert)
    right = ax.secondary_yaxis("right", functions=convert)
    for sec, axis in ((top, top.xaxis), (right, right.yaxis)):
        axis.set_ticks(ticks)
        axis.set_ticklabels([f"{int(t)}" for t in ticks])
        sec.tick_params(labelsize=7, length=2, colors="#555555")
    ax.text(1.0, 1.0, "blocks", transform=ax.transAxes, fontsize=7, color="#555555",
            ha="left", va="bottom")


def causal_cells(num_q_blocks: int, num_k_blocks: int, factor: int) -> np.ndarray:
    """Bool map of displayed cells holding at least one causal (end-aligned) block."""
    offset = num_k_blocks - num_q_blocks
    causal = np.arange(num_k_blocks)[None, :] <= np.arange(num_q_blocks)[:, None] + offset
    return any_pool(causal, factor)


def draw_block_mass(ax, block_mass, *, block_size: int, norm, max_cells: int,
                    overlay: MaskOverlay | None = None, line_width: float = 0.8):
    """Draw one ``[nqb, nkb]`` map on ``ax`` in token coordinates; returns the image artist."""
    plt = render.pyplot()
    from matplotlib.collections import LineCollection

    bm = as_array(block_mass).astype(np.float64)
    nqb, nkb = bm.shape
    factor = pool_factor(max(nqb, nkb), max_cells)
    shown = row_pool(bm, factor)
    cell = factor * block_size  # tokens per displayed cell
    extent = (0, shown.shape[1] * cell, shown.shape[0] * cell, 0)
    cmap = plt.get_cmap(render.HEATMAP_CMAP).with_extremes(bad=render.NONCAUSAL_COLOR)
    # causal cells with no mass show the lowest colour; only cells above the diagonal are blank
    shown = np.ma.masked_array(np.maximum(shown, norm.vmin), mask=~causal_cells(nqb, nkb, factor))
    image = ax.imshow(shown, cmap=cmap, norm=norm, extent=extent, interpolation="nearest", aspect="equal")
    if overlay is not None:
        segs = outline_segments(any_pool(overlay.mask, factor), cell, cell)
        ax.add_collection(LineCollection(segs, colors=render.OUTLINE_COLOR, linewidths=line_width))
    ax.set_xlim(0, nkb * block_size)
    ax.set_ylim(nqb * block_size, 0)
    return image


def _log_norm(maps) -> object:
    from matplotlib.colors import LogNorm

    vmin, vmax = log_range(maps)
    return LogNorm(vmin=vmin, vmax=vmax, clip=True)


def _pool_note(num_blocks: int, max_cells: int) -> str:
    f = pool_factor(num_blocks, max_cells)
    return "" if f == 1 else f" (shown pooled {f}x{f}: mass summed over keys, averaged over queries)"


def heatmap_figure(record: AttentionRecord, layer: int, head: int, *,
                   overlay: MaskOverlay | None = None, max_cells: int = SINGLE_MAX_CELLS):
    """One head's block-mass map with a colour bar, token and block axes and a full title."""
    check_layer(record, layer)
    check_head(record, head)
    plt = render.pyplot()
    meta = record.meta
    bm = record.block_mass[layer, head]
    fig, ax = plt.subplots(figsize=(6.6, 6.0), layout="constrained")
    norm = _log_norm(row_pool(bm, pool_factor(meta.num_blocks, max_cells)))
    image = draw_block_mass(ax, bm, block_size=meta.block_size, norm=norm, max_cells=max_cells,
                            overlay=overlay)
    _set_token_axes(ax, meta.num_blocks * meta.block_size, meta.num_blocks * meta.block_size,
                    left=True, bottom=True)
    _add_block_axes(ax, meta.block_size, meta.num_blocks)
    ax.set_xlabel("key position (tokens)", fontsize=8)
    ax.set_ylabel("query position (tokens)", fontsize=8)
    bar = fig.colorbar(image, ax=ax, shrink=0.8, pad=0.08)
    bar.set_label("block mass (mean attention of a query on the key block)", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    lines = [f"{render.shorten(meta.model.model_id)}, layer {layer}, head {head}",
             render.prompt_label(meta) + _pool_note(meta.num_blocks, max_cells)]
    if overlay is not None:
        lines.append(overlay_caption(bm, overlay))
    ax.set_title("\n".join(lines), fontsize=8.5, pad=22)
    return fig


def grid_shape(num: int) -> tuple[int, int]:
    """(rows, cols) of a near-square grid for ``num`` panels, a little wider than tall."""
    cols = max(1, math.ceil(math.sqrt(num)))
    return math.ceil(num / cols), cols


def head_grid_figure(record: AttentionRecord, layer: int, heads: list[int] | None = None, *,
                     overlays: dict[int, MaskOverlay] | None = None, overlay_title: str = "",
                     max_cells: int = GRID_MAX_CELLS):
    """A layer's heads as one grid, with one shared log colour scale and colour bar."""
    check_layer(record, layer)
    meta = record.meta
    heads = list(range(meta.model.num_heads)) if heads is None else heads
    for h in heads:
        check_head(record, h)
    plt = render.pyplot()
    overlays = overlays or {}
    rows, cols = grid_shape(len(heads))
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols + 1.2, 1.95 * rows + 1.0),
                             layout="constrained", squeeze=False)
    maps = record.block_mass[layer, heads]
    norm = _log_norm(row_pool(maps, pool_factor(meta.num_blocks, max_cells)))
    span = meta.num_blocks * meta.block_size
    image = None
    for i, ax in enumerate(axes.ravel()):
        if i >= len(heads):
            ax.set_axis_off()
            continue
        ov = overlays.get(heads[i])
        image = draw_block_mass(ax, maps[i], block_size=meta.block_size, norm=norm,
                                max_cells=max_cells, overlay=ov, line_width=0.5)
        _set_token_axes(ax, span, span, left=i % cols == 0, bottom=i // cols == rows - 1
                        or i + cols >= len(heads))
        title = f"H{heads[i]}"
        if ov is not None:
            dens, mass = overlay_stats(maps[i], ov)
            title += f" {ov.short} d={dens:.0%} m={mass:.0%}"
        ax.set_title(title, fontsize=8, pad=2)
    bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, aspect=30)
    bar.set_label("block mass (shared log scale)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    head_text = f"{len(heads)} heads" if len(heads) != meta.model.num_heads else "all heads"
    lines = [f"{render.shorten(meta.model.model_id)}, layer {layer}, {head_text}; axes in tokens "
             f"({meta.num_blocks} x {meta.num_blocks} blocks of {meta.block_size})",
             render.prompt_label(meta) + _pool_note(meta.num_blocks, max_cells)]
    if overlays or overlay_title:
        lines.append(f"outlined: {overlay_title or 'block mask'}; d = density, m = covered mass")
    fig.suptitle("\n".join(lines), fontsize=9)
    return fig
