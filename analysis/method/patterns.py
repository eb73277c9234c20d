"""Batched block-pattern construction for the sparse methods (pure torch, any device).

Every function works on all heads of a layer at once (leading dims ``[B, H]``); nothing here
loops over heads or moves data to the host. Block conventions are those of
``kernels/reference.py``: blocks counted from the start of each tensor, queries end-aligned.
"""
from __future__ import annotations

import torch

from ...kernels.reference import (  # block geometry and ranking live with the kernels' twins
    Ranked,
    always_kept,
    assemble_masks_ref,
    budget_of,
    causal_block_mask,
    js_distance,
    mass_covered,
    num_blocks,
    pool_cols_sum,
    query_block_positions,
    rank_desc,
)

__all__ = ["Ranked", "a_shape_mask", "budget_of", "gamma_budget", "js_distance", "mass_covered",
           "pooled_profiles", "probe_coverage", "rank_desc", "tail_first_row", "top_k_mask",
           "vertical_slash_mask"]


def gamma_budget(pooled: torch.Tensor, gamma: float, min_count: int) -> torch.Tensor:
    """Fewest entries of each distribution ``[..., n]`` whose mass reaches ``gamma`` of its total,
    at least ``min_count`` (and at most n): int64 ``[...]``. NaN-safe: NaN counts as zero."""
    return budget_of(rank_desc(pooled), gamma, min_count)


def top_k_mask(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Bool ``[..., n]``: the ``counts[...]`` highest entries of each row (ties: lower index)."""
    return rank_desc(scores).ranks < counts[..., None]


def vertical_slash_mask(v_blocks: torch.Tensor, s_blocks: torch.Tensor, v_count: torch.Tensor,
                        s_count: torch.Tensor, nq: int, nk: int, block_size: int) -> torch.Tensor:
    """Top ``v_count`` key-block columns and top ``s_count`` block diagonals, plus sink and
    diagonal: bool ``[B, H, nqb, nkb]``. ``v_blocks``/``s_blocks`` are pooled profiles ``[B, H, nkb]``.
    The decision step builds the same pattern inside ``kernels.assemble_layout``."""
    return assemble_masks_ref(rank_desc(v_blocks).ranks, rank_desc(s_blocks).ranks, v_count, s_count,
                              nq, nk, block_size)[1]


def tail_first_row(tokens: int, nq: int, block_size: int) -> int | None:
    """The first query-block row that holds one of the final ``tokens`` queries (None for 0)."""
    return max(nq - tokens, 0) // block_size if tokens > 0 else None  # query blocks count from the first query


def a_shape_mask(batch: int, heads: int, nq: int, nk: int, block_size: int, sink_tokens: int,
                 local_tokens: int, device) -> torch.Tensor:
    """Sink blocks plus a local window of blocks before the diagonal: bool ``[B, H, nqb, nkb]``."""
    _, hi = query_block_positions(nq, nk, block_size, device)
    cols = torch.arange(num_blocks(nk, block_size), device=device)
    sink = cols < max(1, num_blocks(sink_tokens, block_size))
    local = (hi[:, None] - cols[None, :]) < max(1, num_blocks(local_tokens, block_size))
    mask = (sink[None, :] | local) | always_kept(nq, nk, block_size, device)
    mask &= causal_block_mask(nq, nk, block_size, device)
    return mask.expand(batch, heads, -1, -1)


def pooled_profiles(vertical: torch.Tensor, slash: torch.Tensor, block_size: int):
    """Token profiles ``[B, H, Nk]`` -> block-pooled ``[B, H, nkb]`` each (sums, so still summing to 1)."""
    return pool_cols_sum(vertical, block_size), pool_cols_sum(slash, block_size)


def probe_coverage(mask: torch.Tensor, v_blocks: torch.Tensor) -> torch.Tensor:
    """Estimated covered mass ``[B, H]``: the probe's exact attention mass inside the kept blocks of
    the last query-block row (the probe's own row)."""
    return (v_blocks * mask[:, :, -1, :].float()).sum(-1)
