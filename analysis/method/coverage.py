"""Coverage masks: for each query-block row, the fewest key blocks whose mass reaches gamma.

This is the paper's notion of a head's sparse pattern and the set the Jaccard metric compares.
Everything here is vectorised (one sort and one cumulative sum per call) and NaN-safe:

* NaN and negative masses count as zero;
* a row with no mass at all keeps no block (an empty row, never an error);
* the target is ``gamma`` times the row's own sum, so rows that do not sum exactly to 1
  (rounding, a truncated capture) are handled the same way as exact ones;
* blocks with zero mass are never kept, so the causal upper triangle stays empty.
"""
from __future__ import annotations

import torch

from ...kernels.reference import clean_mass, coverage_counts_ref
from .method_config import check_gamma

__all__ = ["causal_block_count", "clean_mass", "common_grid", "coverage_counts", "coverage_mask", "density",
           "flatten_causal", "tril_indices"]


def coverage_counts(block_mass: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ranks, count)``: each block's rank in its row (descending mass, ties towards the lower
    key-block index; ``[..., nkb]``) and how many of the top-ranked blocks the coverage keeps
    (``[...]``). ``coverage_mask`` is ``ranks < count``."""
    check_gamma(gamma)
    return coverage_counts_ref(block_mass, gamma)


def coverage_mask(block_mass: torch.Tensor, gamma: float) -> torch.Tensor:
    """Bool mask ``[..., nqb, nkb]``: per row, the fewest blocks whose mass reaches ``gamma``.

    Ties are broken towards the lower key-block index (stable sort), so the result is
    deterministic. ``block_mass`` may have any leading dimensions (layers, heads, prompts).
    """
    ranks, count = coverage_counts(block_mass, gamma)
    return ranks < count[..., None]


def causal_block_count(num_q_blocks: int, num_k_blocks: int | None = None) -> int:
    """Number of (query block, key block) pairs on or below the end-aligned block diagonal."""
    nk = num_q_blocks if num_k_blocks is None else num_k_blocks
    offset = nk - num_q_blocks
    return sum(min(nk, r + offset + 1) for r in range(num_q_blocks))


def density(mask: torch.Tensor) -> torch.Tensor:
    """Kept blocks / causal blocks for each map of a ``[..., nqb, nkb]`` bool mask -> ``[...]``."""
    causal = causal_block_count(mask.shape[-2], mask.shape[-1])
    return mask.float().sum(dim=(-2, -1)) / max(causal, 1)


def tril_indices(num_blocks: int) -> torch.Tensor:
    """Flat indices of the causal (lower-triangular, diagonal included) cells of an n x n map."""
    rows, cols = torch.tril_indices(num_blocks, num_blocks)
    return rows * num_blocks + cols


def flatten_causal(maps: torch.Tensor) -> torch.Tensor:
    """``[..., n, n]`` -> ``[..., n(n+1)/2]``: only the cells a causal map can fill.

    Halves the work of all-pairs products; the upper triangle is zero in every causal map.
    """
    n = maps.shape[-1]
    if maps.shape[-2] != n:
        raise ValueError(f"expected square block maps, got {tuple(maps.shape[-2:])}")
    return maps.reshape(*maps.shape[:-2], n * n)[..., tril_indices(n).to(maps.device)]


def common_grid(masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """Crop coverage masks of prompts of different lengths to their common leading block grid.

    Query-block row r of a causal map only involves key blocks 0..r, so the first n rows of a
    longer prompt's mask are complete rows, directly comparable with a prompt of n blocks: the
    crop compares the same absolute positions and needs no resampling.
    """
    n = min(m.shape[-2] for m in masks)
    return [m[..., :n, :n] for m in masks]
