"""The forward kernel of block-sparse attention (Triton) and its launch shapes.

One program handles ``BLOCK_M`` queries of one (batch, query head); query heads read their KV head
through the group index ``h // (H // H_kv)``. Each program walks the kept key blocks of its layout
row in ``BLOCK_N`` tiles: first the full blocks without any mask, then the rest (diagonal, ragged)
with the end-aligned causal mask. Softmax runs in base 2 with ``scale * log2(e)`` folded into the
logits.

Two choices change speed, not results (``AttnConfig``):

- ``tma``: K and V tiles come through Hopper's tensor-memory accelerator (a 4-D tensor descriptor
  ``[B, H_kv, Nk, D]``, rows past ``Nk`` read as zeros) instead of per-thread pointer loads.
- ``order``: which programs the hardware runs together. ``"heads"``: all query heads of one query
  block side by side. ``"kv"``: the query heads of one KV head over neighbouring query blocks, so
  the programs that run at once read one KV head's K/V and walk its blocks in the same ascending
  order, which lets the L2 cache serve the blocks they share. Both run the longest causal rows
  (the last query blocks) first.
"""
from __future__ import annotations

from dataclasses import dataclass

import triton
import triton.language as tl

ORDERS = ("heads", "kv")


@dataclass(frozen=True)
class AttnConfig:
    """Launch shape: query/key tile sizes (each divides the layout block), warps, pipeline depth,
    Triton's warp specialisation of the main loop, TMA loads of K/V, and the program order."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2
    warp_specialize: bool = False
    tma: bool = False
    order: str = "heads"

    def __post_init__(self):
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")


def default_config(block_size: int, head_dim: int, on_gpu: bool) -> AttnConfig:
    """Tuned on an H200 for bf16 (see docs/benchmarks.md); whole blocks when interpreting."""
    if not on_gpu:
        return AttnConfig(block_size, block_size, 4, 1)
    if block_size == 128 and head_dim == 128:
        return AttnConfig(128, 128, 8, 3, order="kv")
    if block_size == 128:
        return AttnConfig(128, 64, 4, 3, order="kv")
    return AttnConfig(64, 64, 4, 3, order="kv")


def mass_config(block_size: int, head_dim: int, on_gpu: bool) -> AttnConfig:
    """Tiles of the two-pass block-mass kernel (``mass_pass``) when the caller gives none. On an
    H200, head dim 64 and block 128 (Qwen2.5-Coder-0.5B, 3 dense pivotal heads at 32K): 64 x 128
    tiles 1.07 ms against 1.21 for the forward's 128 x 64 (docs/benchmarks.md, "Pivotal layers");
    elsewhere the forward's own tiles, not measured against others."""
    if on_gpu and block_size == 128 and head_dim == 64:
        return AttnConfig(64, 128, 4, 3)
    return default_config(block_size, head_dim, on_gpu)


@triton.jit
def _load_kv_tile(base, desc, b, kvh, start, offs_n, offs_d, stride_n, stride_d, NK,
                  BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr,
                  USE_TMA: tl.constexpr):
    """Rows ``start .. start + BLOCK_N`` of one KV head as ``[BLOCK_N, HEAD_DIM]`` (zeros past NK)."""
    if USE_TMA:
        tile = desc.load([b, kvh, start, 0]).reshape(BLOCK_N, HEAD_DIM)
    else:
        rows = start + offs_n
        ptrs = base + rows[:, None] * stride_n + offs_d[None, :] * stride_d
        if MASKED:
            tile = tl.load(ptrs, mask=rows[:, None] < NK, other=0.0)
        else:
            tile = tl.load(ptrs)
    return tile


@triton.jit
def _attn_tile(acc, m_i, l_i, q, k_base, v_base, k_desc, v_desc, b, kvh, idx_ptr, it, offs_n,
               offs_d, pos_m, stride_kn, stride_kd, stride_vn, stride_vd, stride_ik, NK, qk_scale,
               lse_ptr, lse_mask, NQP,
               BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
               MASKED: tl.constexpr, STORE_OUT: tl.constexpr, USE_TMA: tl.constexpr,
               TILE_LSE: tl.constexpr):
    """One ``BLOCK_N`` key tile of the online softmax; returns the updated ``(acc, m_i, l_i)``.

    With ``TILE_LSE`` it also stores, for each query row, the tile's log2-sum-exp2 of the scaled
    logits (``m + log2(sum p)``) at ``lse_ptr + it * NQP`` (rows where ``lse_mask``): the one-pass
    block-mass map is built from these and the final row statistics."""
    SUB: tl.constexpr = BLOCK_SIZE // BLOCK_N
    c = tl.load(idx_ptr + (it // SUB) * stride_ik)
    start = c * BLOCK_SIZE + (it % SUB) * BLOCK_N
    k = _load_kv_tile(k_base, k_desc, b, kvh, start, offs_n, offs_d, stride_kn, stride_kd, NK,
                      BLOCK_N, HEAD_DIM, MASKED, USE_TMA)
    qk = tl.dot(q, tl.trans(k))  # [BLOCK_M, BLOCK_N] raw logits; scale folded into exp2
    if MASKED:
        cols = start + offs_n
        qk = tl.where(cols[None, :] <= pos_m[:, None], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that see nothing yet
    else:
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        m_use = m_new
    p = tl.math.exp2(qk * qk_scale - m_use[:, None])  # one FMA + exp2 per element
    alpha = tl.math.exp2(m_i - m_use)
    row_sum = tl.sum(p, 1)
    l_i = l_i * alpha + row_sum
    if TILE_LSE:
        tl.store(lse_ptr + it * NQP, m_use + tl.math.log2(row_sum), mask=lse_mask)
    if STORE_OUT:
        v = _load_kv_tile(v_base, v_desc, b, kvh, start, offs_n, offs_d, stride_vn, stride_vd, NK,
                          BLOCK_N, HEAD_DIM, MASKED, USE_TMA)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, m_new, l_i


@triton.jit
def program_coords(pid, H, GROUP, NUM_M, ORDER_KV: tl.constexpr):
    """(batch, query head, query tile) of program ``pid``; the longest rows come first."""
    if ORDER_KV:
        per_kv = NUM_M * GROUP
        g = pid // per_kv  # b * H_kv + kv head
        rem = pid % per_kv
        h = (g % (H // GROUP)) * GROUP + rem % GROUP
        b = g // (H // GROUP)
        mi = rem // GROUP
    else:
        bh = pid % (tl.num_programs(0) // NUM_M)
        b = bh // H
        h = bh % H
        mi = pid // (tl.num_programs(0) // NUM_M)
    return b, h, NUM_M - 1 - mi


@triton.jit
def load_query_tile(Q, b, h, pid_m, stride_qb, stride_qh, stride_qm, stride_qd, NQ, NK,
                    BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Rows of query tile ``pid_m`` of (b, h): ``(offs_m, pos_m, q)``; ``pos_m`` are the rows'
    absolute positions (queries end-aligned to the keys), rows past NQ load as zeros."""
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm
                + offs_d[None, :] * stride_qd, mask=offs_m[:, None] < NQ, other=0.0)
    return offs_m, offs_m + (NK - NQ), q


@triton.jit
def attn_fwd_kernel(Q, K, V, O, Stats, Counts, Indices, NumFull, KDesc, VDesc, Lse, Slots,
                    stride_qb, stride_qh, stride_qm, stride_qd,
                    stride_kb, stride_kh, stride_kn, stride_kd,
                    stride_vb, stride_vh, stride_vn, stride_vd,
                    stride_ob, stride_oh, stride_om, stride_od,
                    stride_cb, stride_ch, stride_ib, stride_ih, stride_ir, stride_ik,
                    H, GROUP, NQ, NK, NUM_M, NQP, KT, qk_scale,
                    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    HEAD_DIM: tl.constexpr, STORE_OUT: tl.constexpr, STORE_STATS: tl.constexpr,
                    WARP_SPEC: tl.constexpr, USE_TMA: tl.constexpr, ORDER_KV: tl.constexpr,
                    TILE_LSE: tl.constexpr):
    b, h, pid_m = program_coords(tl.program_id(0), H, GROUP, NUM_M, ORDER_KV)
    kvh = h // GROUP
    r = (pid_m * BLOCK_M) // BLOCK_SIZE
    SUB: tl.constexpr = BLOCK_SIZE // BLOCK_N
    offs_m, pos_m, q = load_query_tile(Q, b, h, pid_m, stride_qb, stride_qh, stride_qm, stride_qd,
                                       NQ, NK, BLOCK_M, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row = b * stride_cb + h * stride_ch + r
    count = tl.load(Counts + row)
    n_full = tl.load(NumFull + row)
    idx_ptr = Indices + b * stride_ib + h * stride_ih + r * stride_ir
    k_base = K + b * stride_kb + kvh * stride_kh
    v_base = V + b * stride_vb + kvh * stride_vh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    lse_ptr = Lse + offs_m  # Lse: [slots, KT, NQP] fp32; Slots: [B * H] int32, -1 = no map
    lse_mask = offs_m < 0
    if TILE_LSE:
        slot = tl.load(Slots + b * H + h)
        lse_ptr = Lse + tl.maximum(slot, 0).to(tl.int64) * KT * NQP + offs_m
        lse_mask = offs_m < tl.where(slot >= 0, NQ, 0)  # one comparison: a plain bool mask
    for it in tl.range(0, n_full * SUB, warp_specialize=WARP_SPEC):
        acc, m_i, l_i = _attn_tile(acc, m_i, l_i, q, k_base, v_base, KDesc, VDesc, b, kvh, idx_ptr,
                                   it, offs_n, offs_d, pos_m, stride_kn, stride_kd, stride_vn,
                                   stride_vd, stride_ik, NK, qk_scale, lse_ptr, lse_mask, NQP,
                                   BLOCK_SIZE, BLOCK_N, HEAD_DIM, False, STORE_OUT, USE_TMA,
                                   TILE_LSE)
    for it in range(n_full * SUB, count * SUB):
        acc, m_i, l_i = _attn_tile(acc, m_i, l_i, q, k_base, v_base, KDesc, VDesc, b, kvh, idx_ptr,
                                   it, offs_n, offs_d, pos_m, stride_kn, stride_kd, stride_vn,
                                   stride_vd, stride_ik, NK, qk_scale, lse_ptr, lse_mask, NQP,
                                   BLOCK_SIZE, BLOCK_N, HEAD_DIM, True, STORE_OUT, USE_TMA,
                                   TILE_LSE)
    row_ok = offs_m < NQ
    if STORE_OUT:
        inv_l = tl.where(l_i > 0, 1.0 / tl.where(l_i > 0, l_i, 1.0), 0.0)
        out = acc * inv_l[:, None]
        tl.store(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om
                 + offs_d[None, :] * stride_od, out.to(O.dtype.element_ty), mask=row_ok[:, None])
    if STORE_STATS:  # Stats: [B, H, 2, NQ] fp32 (row max in log2 domain, row sum)
        s_base = Stats + ((b * H + h) * 2) * NQ
        tl.store(s_base + offs_m, m_i, mask=row_ok)
        tl.store(s_base + NQ + offs_m, l_i, mask=row_ok)
