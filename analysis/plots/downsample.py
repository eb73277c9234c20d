"""Display pooling, sparse ticks and mask outlines: pure numpy, no matplotlib.

A 128K-token prompt at block size 128 gives 1000 x 1000 blocks per head, more than a figure can
show. For display, maps are pooled in ``factor x factor`` groups of blocks:

* ``sum_pool`` sums every group: the total mass is exactly preserved (nothing is dropped);
* ``row_pool`` sums over key blocks and averages over the query blocks of a group, so every
  displayed row still sums to 1 and the colour scale keeps its meaning (the mean attention mass
  of a query on a group of keys) whatever the factor;
* ``any_pool`` pools bool masks: a displayed cell is kept if any of its blocks is kept.
"""
from __future__ import annotations

import math

import numpy as np


def as_array(x) -> np.ndarray:
    """A numpy copy of a torch tensor or array-like (fp32 tensors stay fp32)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def pool_factor(num_blocks: int, max_cells: int) -> int:
    """Smallest integer factor that shows ``num_blocks`` in at most ``max_cells`` cells."""
    if max_cells < 1:
        raise ValueError(f"max_cells must be positive, got {max_cells}")
    return max(1, math.ceil(num_blocks / max_cells))


def _pad_to(x: np.ndarray, factor: int) -> np.ndarray:
    """Zero-pad the last two dims up to multiples of ``factor``."""
    rows, cols = x.shape[-2:]
    pr, pc = (-rows) % factor, (-cols) % factor
    if pr == 0 and pc == 0:
        return x
    pad = [(0, 0)] * (x.ndim - 2) + [(0, pr), (0, pc)]
    return np.pad(x, pad)


def sum_pool(x, factor: int) -> np.ndarray:
    """Sum ``[..., R, C]`` over ``factor x factor`` groups -> ``[..., ceil(R/f), ceil(C/f)]``.

    The last group of each axis may be partial (zero-padded), so the total is exactly preserved.
    """
    x = as_array(x)
    if factor < 1:
        raise ValueError(f"factor must be positive, got {factor}")
    if factor == 1:
        return x.copy()
    padded = _pad_to(x, factor)
    r, c = padded.shape[-2] // factor, padded.shape[-1] // factor
    grouped = padded.reshape(*padded.shape[:-2], r, factor, c, factor)
    return grouped.sum(axis=(-3, -1), dtype=np.float64).astype(x.dtype if x.dtype.kind == "f" else np.float64)


def rows_per_group(num_rows: int, factor: int) -> np.ndarray:
    """How many real rows each of the ``ceil(num_rows / factor)`` groups holds."""
    groups = math.ceil(num_rows / factor)
    counts = np.full(groups, factor, dtype=np.int64)
    counts[-1] = num_rows - factor * (groups - 1)
    return counts


def row_pool(x, factor: int) -> np.ndarray:
    """Sum over key groups, mean over query groups: displayed rows keep the rows' mass (1)."""
    x = as_array(x)
    pooled = sum_pool(x, factor)
    counts = rows_per_group(x.shape[-2], factor).astype(pooled.dtype)
    return pooled / counts[:, None]


def any_pool(mask, factor: int) -> np.ndarray:
    """Bool ``[..., R, C]`` -> bool ``[..., ceil(R/f), ceil(C/f)]``: any kept block in the group."""
    mask = as_array(mask).astype(bool)
    if factor == 1:
        return mask.copy()
    padded = _pad_to(mask, factor)
    r, c = padded.shape[-2] // factor, padded.shape[-1] // factor
    return padded.reshape(*padded.shape[:-2], r, factor, c, factor).any(axis=(-3, -1))


def nice_step(span: float, max_ticks: int) -> float:
    """A 1-2-5 step that puts at most ``max_ticks`` ticks over ``span``."""
    if span <= 0:
        return 1.0
    raw = span / max(max_ticks, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    for mult in (1, 2, 5, 10):
        if mult * power >= raw:
            return mult * power
    return 10 * power


def sparse_ticks(span: float, max_ticks: int = 6) -> np.ndarray:
    """Round tick positions from 0 to ``span`` (inclusive where it lands), at most ~``max_ticks``."""
    step = nice_step(span, max_ticks)
    return np.arange(0.0, span + step * 1e-9, step)


def format_tokens(value: float) -> str:
    """Compact token counts for tick labels: 512, 4K, 12.5K, 1M."""
    value = float(value)
    if abs(value) >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if abs(value) >= 1000:
        return f"{value / 1000:g}K"
    return f"{value:g}"


def _runs(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For a bool ``[K, M]`` array: (line index, run start, run end) of every run of True."""
    padded = np.pad(edges.astype(np.int8), ((0, 0), (1, 1)))
    step = np.diff(padded, axis=1)
    lines_s, starts = np.nonzero(step == 1)
    _, ends = np.nonzero(step == -1)
    return lines_s, starts, ends


def outline_segments(mask, cell_w: float = 1.0, cell_h: float = 1.0) -> np.ndarray:
    """Segments ``[S, 2, 2]`` tracing the boundary of the True cells of a bool ``[R, C]`` mask.

    Coordinates put cell ``(r, c)`` at ``x in [c*cell_w, (c+1)*cell_w]``, ``y in [r*cell_h,
    (r+1)*cell_h]`` (imshow with ``origin='upper'`` and a matching extent). Collinear unit edges
    are merged into runs, so a solid band costs a handful of segments, not one per block.
    """
    m = as_array(mask).astype(bool)
    padded = np.pad(m, 1)
    horizontal = padded[1:, 1:-1] != padded[:-1, 1:-1]  # [R+1, C]: edge above row r
    vertical = padded[1:-1, 1:] != padded[1:-1, :-1]  # [R, C+1]: edge left of column c
    rows, starts, ends = _runs(horizontal)
    h = np.stack([np.stack([starts * cell_w, rows * cell_h], -1),
                  np.stack([ends * cell_w, rows * cell_h], -1)], axis=1)
    cols, vstarts, vends = _runs(vertical.T)
    v = np.stack([np.stack([cols * cell_w, vstarts * cell_h], -1),
                  np.stack([cols * cell_w, vends * cell_h], -1)], axis=1)
    return np.concatenate([h, v], axis=0).astype(np.float64)


def log_range(values, floor_ratio: float = 1e-5) -> tuple[float, float]:
    """(vmin, vmax) for a log colour scale over the positive entries of ``values``.

    ``vmin`` is the smallest positive value, but never below ``vmax * floor_ratio``: a few
    1e-12 entries must not squeeze the visible structure into one colour.
    """
    v = as_array(values)
    pos = v[np.isfinite(v) & (v > 0)]
    if pos.size == 0:
        return 1e-6, 1.0
    vmax = float(pos.max())
    vmin = max(float(pos.min()), vmax * floor_ratio)
    if vmin >= vmax:
        vmin = vmax / 10.0
    return vmin, vmax
