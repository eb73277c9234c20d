"""The block mask and layout draft of one layer in one launch (Triton): the last part of the
decision step (docs/method.md, steps 3-5).

The sort-based parts of a decision stay in torch (ranks of the pooled profiles and estimates,
budgets, the sharing test); what follows them used to be a hundred small tensor operations per
layer: vertical-slash masks from ranks (columns, three block diagonals per key block, sink and
diagonal, causal cut), the query-aware mask, SharePrefill's borrowed patterns and dense pivotal
rows, the exact tail, then the layout draft (kept blocks per row, their indices kept-first and
ascending, the blocks that need no causal mask). ``assemble_kernel`` does all of it with one
program per (batch, head, query block), looping over key blocks in tiles.

Inputs are described in ``reference.assemble_masks_ref``, the plain-torch twin of the masks; the
draft's twin is ``layout.BlockLayout.draft``. ``backend.assemble_layout`` chooses between them.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .device import on_input_device
from .reference import num_blocks


@triton.jit
def _rank_below(ptr, idx, ok, count):
    """``rank[idx] < count`` where ``ok``, False elsewhere."""
    rank = tl.load(ptr + idx, mask=ok, other=0)
    return ok & (rank < count)


@triton.jit
def assemble_kernel(VRank, SRank, VOwn, SOwn, VMin, SMin, QaFlag, QaRank, QaCount,
                    Shared, Pivotal, Pattern, LrRank, LrCount,
                    Mask, Own, Counts, Ordered, NumFull,
                    H, NQB, NKB, NQ, NK, TAIL_FIRST,
                    BLOCK_SIZE: tl.constexpr, BLOCK_C: tl.constexpr, HAS_MIN: tl.constexpr,
                    HAS_QA: tl.constexpr, HAS_SHARE: tl.constexpr, HAS_LAST_ROW: tl.constexpr,
                    STORE_OWN: tl.constexpr):
    pid = tl.program_id(0)
    bh = pid // NQB
    r = pid % NQB
    off = NK - NQ
    first_pos = r * BLOCK_SIZE + off
    last_pos = tl.minimum((r + 1) * BLOCK_SIZE, NQ) - 1 + off
    lo = first_pos // BLOCK_SIZE
    hi = last_pos // BLOCK_SIZE
    v_own = tl.load(VOwn + bh)
    s_own = tl.load(SOwn + bh)
    v_min = 0
    s_min = 0
    if HAS_MIN:
        v_min = tl.load(VMin + bh)
        s_min = tl.load(SMin + bh)
    qa = 0
    qa_count = 0
    if HAS_QA:
        qa = tl.load(QaFlag + bh).to(tl.int32)
        qa_count = tl.load(QaCount + bh * NQB + r)
    shared = 0
    pivotal = 0
    lr_count = 0
    if HAS_SHARE:
        shared = tl.load(Shared + bh).to(tl.int32)
        pivotal = tl.load(Pivotal + bh).to(tl.int32)
        if HAS_LAST_ROW:
            lr_count = tl.where(r == NQB - 1, tl.load(LrCount + bh), 0)
    row = bh * NQB + r
    prof = bh * NKB
    kept = 0
    n_full = 0
    dropped = 0
    for c0 in range(0, NKB, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        inb = cols < NKB
        causal = inb & (cols * BLOCK_SIZE <= last_pos)
        always = causal & ((cols == 0) | ((cols >= lo) & (cols <= hi)))
        col_own = _rank_below(VRank + prof, cols, inb, v_own)
        d0 = lo - cols
        d1 = lo - cols - 1
        d2 = hi - cols
        ok0 = inb & (d0 >= 0) & (d0 < NKB)
        ok1 = inb & (d1 >= 0) & (d1 < NKB)
        ok2 = inb & (d2 >= 0) & (d2 < NKB)
        diag_own = _rank_below(SRank + prof, d0, ok0, s_own) | _rank_below(SRank + prof, d1, ok1, s_own) \
            | _rank_below(SRank + prof, d2, ok2, s_own)
        own = (col_own | diag_own | always) & causal
        keep = own
        if HAS_MIN:
            col_min = _rank_below(VRank + prof, cols, inb, v_min)
            diag_min = _rank_below(SRank + prof, d0, ok0, s_min) | _rank_below(SRank + prof, d1, ok1, s_min) \
                | _rank_below(SRank + prof, d2, ok2, s_min)
            minimal = (col_min | diag_min | always) & causal
            if HAS_QA:
                qa_keep = _rank_below(QaRank + row * NKB, cols, inb, qa_count) | minimal
                keep = tl.where(qa != 0, qa_keep, keep)
            if HAS_SHARE:
                borrowed = (tl.load(Pattern + row * NKB + cols, mask=inb, other=0) != 0) | minimal
                if HAS_LAST_ROW:
                    borrowed = borrowed | _rank_below(LrRank + prof, cols, inb, lr_count)
                keep = tl.where(shared != 0, borrowed, keep)
                keep = tl.where(pivotal != 0, causal, keep)
        keep = keep | (causal & (r >= TAIL_FIRST))
        tl.store(Mask + row * NKB + cols, keep.to(tl.int8), mask=inb)
        if STORE_OWN:
            tl.store(Own + row * NKB + cols, own.to(tl.int8), mask=inb)
        # the draft: kept blocks first (ascending), then NKB for the others, written from the end
        kept_i = (keep & causal).to(tl.int32)
        drop_i = (inb & ~(keep & causal)).to(tl.int32)
        pos = tl.where(kept_i != 0, kept + tl.cumsum(kept_i, 0) - 1, NKB - dropped - tl.cumsum(drop_i, 0))
        tl.store(Ordered + row * NKB + pos, tl.where(kept_i != 0, cols, NKB), mask=inb)
        whole = ((cols + 1) * BLOCK_SIZE - 1 <= first_pos) & ((cols + 1) * BLOCK_SIZE <= NK)
        n_full += tl.sum(((kept_i != 0) & whole).to(tl.int32), 0)
        kept += tl.sum(kept_i, 0)
        dropped += tl.sum(drop_i, 0)
    tl.store(Counts + row, kept)
    tl.store(NumFull + row, n_full)


def _i64(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.int64).contiguous()


def _u8(t: torch.Tensor) -> torch.Tensor:
    """Bool (or 0/1) tensors go to the kernel as bytes."""
    return t.contiguous().view(torch.uint8) if t.dtype == torch.bool else t.to(torch.uint8).contiguous()


@on_input_device
def assemble_triton(v_rank, s_rank, v_count, s_count, nq: int, nk: int, block_size: int, *,
                    minimal=None, query_aware=None, share=None, tail_first: int | None = None,
                    want_own: bool = False):
    """Launch ``assemble_kernel``; arguments as ``backend.assemble_layout``. Returns
    ``(mask, own or None, counts, ordered, num_full)``."""
    b, h, nkb = v_rank.shape
    nqb = num_blocks(nq, block_size)
    dev = v_rank.device
    mask = torch.empty((b, h, nqb, nkb), dtype=torch.uint8, device=dev)
    own = torch.empty_like(mask) if want_own else mask
    counts = torch.empty((b, h, nqb), dtype=torch.int32, device=dev)
    num_full = torch.empty_like(counts)
    ordered = torch.empty((b, h, nqb, nkb), dtype=torch.int32, device=dev)
    v_min, s_min = minimal if minimal is not None else (v_count, s_count)
    qa_flag, qa_rank, qa_count = query_aware if query_aware is not None else (v_count, v_rank, v_count)
    if share is not None:
        shared, pivotal, pattern, last_row = share
        lr_rank, lr_count = last_row if last_row is not None else (v_rank, v_count)
    else:
        shared = pivotal = lr_count = v_count
        pattern = mask
        lr_rank, last_row = v_rank, None
    assemble_kernel[(b * h * nqb,)](
        _i64(v_rank), _i64(s_rank), _i64(v_count), _i64(s_count), _i64(v_min), _i64(s_min),
        _u8(qa_flag), _i64(qa_rank), _i64(qa_count), _u8(shared), _u8(pivotal),
        _u8(pattern), _i64(lr_rank), _i64(lr_count),
        mask, own, counts, ordered, num_full,
        h, nqb, nkb, nq, nk, nqb if tail_first is None else tail_first,
        BLOCK_SIZE=block_size, BLOCK_C=min(256, triton.next_power_of_2(nkb)), HAS_MIN=minimal is not None,
        HAS_QA=query_aware is not None, HAS_SHARE=share is not None, HAS_LAST_ROW=last_row is not None,
        STORE_OWN=want_own)
    return mask.view(torch.bool), (own.view(torch.bool) if want_own else None), counts, ordered, num_full
