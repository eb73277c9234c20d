"""A :class:`BlockLayout` as FlexAttention's ``BlockMask``, without host syncs or a token mask.

FlexAttention (``torch.nn.attention.flex_attention``) reads a block mask as two CSR lists per
(batch, query head, query block): *full* blocks, run without any masking, and *partial* blocks,
run through a ``mask_mod(b, h, q_idx, kv_idx)``. Our layout maps onto that directly:

* Blocks are counted from the start of each tensor in both (query block ``r`` holds query rows
  ``[r*B, (r+1)*B)``, key block ``c`` keys ``[c*B, (c+1)*B)``), so a layout row is a BlockMask row.
* The leading ``num_full`` entries of each layout row (``layout._full_block_mask``: every key of the
  block visible to every query of the row, and not the ragged last key block) become the full
  blocks; the rest of the row (the diagonal block or two, the ragged last key block) the partial
  blocks, with the end-aligned causal ``mask_mod`` ``q_idx + (Nk - Nq) >= kv_idx``. Causality also
  keeps every real query away from keys past ``Nk``, so a ragged last block needs no extra rule.
* Query heads index the mask (``[B, H, ...]``); K/V keep their ``H_kv`` heads and the call passes
  ``enable_gqa=True`` (flash-attn-4 then reads K/V through the group index, as our kernel does).

A row has at most ``partial_width(nq, nk, B)`` partial blocks (a query block spans at most two key
blocks along the diagonal, plus a ragged last one): the partial lists are that wide, gathered from
the layout with tensor ops only. The full lists reuse the layout's width (``max_kept``), or a fixed
width (``full_width``, e.g. ``nkb``) when a compiled caller wants shapes that do not change from
layer to layer. Entries past each row's count are 0, a valid block index, never read.

``block_mask_token_mask`` is the plain-torch reading of a BlockMask (what the fused kernels
compute: full blocks unmasked, partial blocks through ``mask_mod``), the twin the tests compare
with ``reference.block_sparse_attention_ref``: FlexAttention's own eager CPU path applies only the
``mask_mod`` and ignores the block lists, so it cannot check them.
"""
from __future__ import annotations

import functools

import torch

from .layout import BlockLayout
from .reference import num_blocks


@functools.lru_cache(maxsize=256)
def partial_width(nq: int, nk: int, block_size: int) -> int:
    """Most causal-valid blocks that are not full in one query-block row (at least 1), from the
    geometry alone (host arithmetic, no device work)."""
    off = nk - nq
    complete = nk // block_size  # key blocks that are not ragged
    widest = 1
    for r in range(num_blocks(nq, block_size)):
        first = r * block_size + off  # absolute position of the row's first query
        last = min((r + 1) * block_size, nq) - 1 + off
        n_full = min((first + 1) // block_size, complete)
        widest = max(widest, last // block_size + 1 - n_full)
    return widest


def block_mask_tensors(layout: BlockLayout, full_width: int | None = None, partial_width_min: int | None = None):
    """``(kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices)``, int32 on the layout's
    device: partial counts ``[B, H, nqb]`` and indices ``[B, H, nqb, partial_width]``, full counts
    ``[B, H, nqb]`` and indices ``[B, H, nqb, max(max_kept, full_width)]``. Tensor ops only.
    ``partial_width_min`` widens the partial lists (inductor's CPU kernel wants both lists ``nkb`` wide)."""
    idx = layout.indices  # [B, H, nqb, K] sorted, -1 padded; full blocks lead each row
    width = idx.shape[-1]
    num_full = layout.num_full.to(torch.int32)
    cols = torch.arange(width, device=idx.device, dtype=torch.int32)
    full_idx = torch.where(cols < num_full[..., None], idx, 0).to(torch.int32)
    if full_width is not None and full_width > width:
        full_idx = torch.nn.functional.pad(full_idx, (0, full_width - width))
    p = max(partial_width(layout.nq, layout.nk, layout.block_size), partial_width_min or 0)
    j = torch.arange(p, device=idx.device, dtype=torch.int32)
    pos = (num_full[..., None] + j).clamp(max=width - 1).long()  # [B, H, nqb, p]
    num_part = (layout.counts - num_full).to(torch.int32)
    part_idx = torch.where(j < num_part[..., None], torch.gather(idx, -1, pos), 0).to(torch.int32)
    return num_part.contiguous(), part_idx.contiguous(), num_full.contiguous(), full_idx.contiguous()


def _causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def end_aligned_causal(offset):
    """The partial blocks' ``mask_mod``: query row ``i`` sees keys ``j <= i + offset`` (offset
    ``Nk - Nq``: an int, or a one-element integer tensor on the device, read as ``offset[0]``, for a
    compiled call whose lengths are dynamic: FLASH's template loads it like any captured buffer).
    Offset 0 gives the plain causal mask, which captures nothing."""
    if isinstance(offset, int) and offset == 0:
        return _causal
    if isinstance(offset, torch.Tensor):
        def end_aligned_tensor(b, h, q_idx, kv_idx):
            return q_idx + offset[0] >= kv_idx

        return end_aligned_tensor

    def end_aligned(b, h, q_idx, kv_idx):
        return q_idx + offset >= kv_idx

    return end_aligned


def block_mask_from_tensors(tensors, block_size: int, nq, nk, mask_mod):
    """A forward-only BlockMask (no transposed lists) from ``block_mask_tensors``' output; traceable
    inside ``torch.compile`` (``nq``/``nk`` may be symbolic there)."""
    from torch.nn.attention.flex_attention import BlockMask

    num_part, part_idx, num_full, full_idx = tensors
    return BlockMask.from_kv_blocks(num_part, part_idx, num_full, full_idx, BLOCK_SIZE=block_size,
                                    mask_mod=mask_mod, seq_lengths=(nq, nk), compute_q_blocks=False)


def to_block_mask(layout: BlockLayout, full_width: int | None = None):
    """The layout as a BlockMask ``[B, H, Nq, Nk]`` (eager; no host sync)."""
    return block_mask_from_tensors(block_mask_tensors(layout, full_width), layout.block_size, layout.nq,
                                   layout.nk, end_aligned_causal(layout.nk - layout.nq))


def _dense_blocks(counts: torch.Tensor, indices: torch.Tensor, nkb: int) -> torch.Tensor:
    """CSR ``counts [B, H, R]``, ``indices [B, H, R, W]`` -> bool ``[B, H, R, nkb]``; counts a
    block listed twice in a row as an error."""
    w = indices.shape[-1]
    live = torch.arange(w, device=indices.device) < counts[..., None]  # [B, H, R, W]
    slots = torch.where(live, indices.long(), nkb)
    hits = torch.zeros(*counts.shape, nkb + 1, dtype=torch.int32, device=indices.device)
    hits.scatter_add_(-1, slots, torch.ones_like(slots, dtype=torch.int32))
    if bool((hits[..., :nkb] > 1).any()):
        raise ValueError("a block is listed twice in one row")
    return hits[..., :nkb] > 0


def block_mask_token_mask(block_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """What a fused FlexAttention kernel attends to: ``(keep, overlap)``, bool ``[B, H, Nq, Nk]``
    (full blocks whole, partial blocks where ``mask_mod`` allows) and bool ``[B, H, nqb, nkb]``
    (blocks listed as both full and partial; must be empty). Plain torch, for tests."""
    nq, nk = block_mask.seq_lengths
    bq, bk = block_mask.BLOCK_SIZE
    nkb = num_blocks(nk, bk)
    part = _dense_blocks(block_mask.kv_num_blocks, block_mask.kv_indices, nkb)
    full = torch.zeros_like(part)
    if block_mask.full_kv_num_blocks is not None:
        full = _dense_blocks(block_mask.full_kv_num_blocks, block_mask.full_kv_indices, nkb)

    def tokens(m):  # [B, H, nqb, nkb] -> [B, H, Nq, Nk]
        return m.repeat_interleave(bq, dim=2).repeat_interleave(bk, dim=3)[:, :, :nq, :nk]

    q_idx = torch.arange(nq, device=part.device)[:, None]
    kv_idx = torch.arange(nk, device=part.device)[None, :]
    allowed = block_mask.mask_mod(None, None, q_idx, kv_idx)  # [Nq, Nk]: our mask_mods broadcast
    return tokens(full) | (tokens(part) & allowed), full & part
