"""Block-mass pass of block-sparse attention (Triton): the map A[r, c] of docs/method.md step 4.

Runs after the forward kernel of ``attn_fwd`` has saved each query row's final max and sum
(``Stats``). It re-reads only the kept K blocks, recomputes ``QK^T``, normalises it with those
statistics, and adds ``mean_rows(sum_cols(p))`` of each kept block into ``[B, H, nqb, nkb]`` with
an atomic add: one extra ``QK^T`` over kept blocks (about half the forward's FLOPs), only for the
calls that ask for it. Twin: ``reference.block_sparse_attention_ref(..., return_block_mass=True)``.

The statistics can also come from another kernel's log-sum-exp (the ``flash`` backend: flash-attn-4
returns one per row): ``stats_from_lse`` turns it into the same ``Stats``, twin
``reference.block_mass_from_stats_ref``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .attn_fwd import AttnConfig, load_query_tile
from .device import on_input_device
from .layout import BlockLayout
from .limits import LOG2E

# Kept key tiles of one row per program of the two-pass map; 0: one program walks its whole row.
# Splitting (a third grid axis, partial sums meeting in the atomic adds) shortens the critical path
# of a few dense heads' long rows (a SharePrefill layer with one pivotal head of 14 at 32K: 256
# tiles for one program), but measured 0-7% slower on the H200 where many heads are mapped or rows
# are short (docs/benchmarks.md, "The whole layer as one step"). The few-heads case, measured in
# session 10 (docs/scripts/pivotal_cost.py synth 32768 1 0.5): 3.30 ms unsplit, 3.23 with 16 tiles a
# program, 3.08 with 64 (-7% of the call, -27% of its map). 0 until a real model's prefill is timed
# with 64 (a Qwen pivotal layer has 1-3 mapped heads of 14; the Llama-shape planted layers more).
MASS_SPLIT = 0
# Kept key tiles whose row sums a program gathers before one cross-row reduction and one vector of
# atomic adds; 1: a reduction and an atomic add after every tile. The per-tile reduction (a barrier
# across the program's warps) and atomic stall the loop; gathering them is meant to cut that.
# A power of two; a launch gathers fewer where the tiles would not fit in shared memory
# (``gathered_tiles``). Measured on the H200 in session 10 (docs/scripts/pivotal_cost.py synth 32768 1
# 0.5: Qwen2.5-Coder-0.5B shapes, one pivotal head of 14, the layer's kernel with its two-pass map):
# 3.30 ms tile by tile, 3.50 gathering 4 (8 asks for more than fits: 4 too), so it stays 1. The same
# run timed the row split (MASS_SPLIT) at 3.23 ms with 16 tiles a program and 3.08 with 64.
MASS_COLS = 1
# Shared memory the gathered key tiles may take: the compiler keeps every unrolled tile's operand
# at once. Measured on the H200 (the GPU suite, session 10): 64 KiB of tiles compile at 3 stages,
# 128 KiB do not (270 KB asked of 227 KB), e.g. 4 tiles of 128 x 128 at head dim 128.
MASS_COLS_BYTES = 64 * 1024


@triton.jit
def block_mass_kernel(Q, K, Stats, Mass, Counts, Indices, Wanted,
                       stride_qb, stride_qh, stride_qm, stride_qd,
                       stride_kb, stride_kh, stride_kn, stride_kd,
                       stride_cb, stride_ch, stride_ib, stride_ih, stride_ir, stride_ik,
                       H, GROUP, NQ, NK, NKB, qk_scale,
                       BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       HEAD_DIM: tl.constexpr, SPLIT: tl.constexpr, COLS: tl.constexpr):
    pid_bh = tl.program_id(0)
    pid_m = tl.num_programs(1) - 1 - tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    r = (pid_m * BLOCK_M) // BLOCK_SIZE
    SUB: tl.constexpr = BLOCK_SIZE // BLOCK_N
    count = tl.load(Counts + b * stride_cb + h * stride_ch + r) * SUB  # the row's kept key tiles
    first = 0
    last = count
    if SPLIT > 0:  # this program's share of them (MASS_SPLIT)
        first = tl.program_id(2) * SPLIT
        last = tl.minimum(first + SPLIT, count)
    # heads that did not ask, and shares past the row's end: no loads, no work
    if (tl.load(Wanted + pid_bh) != 0) & (first < last):
        kvh = h // GROUP
        offs_m, pos_m, q = load_query_tile(Q, b, h, pid_m, stride_qb, stride_qh, stride_qm, stride_qd,
                                           NQ, NK, BLOCK_M, HEAD_DIM)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < NQ
        s_base = Stats + (pid_bh * 2) * NQ
        m_i = tl.load(s_base + offs_m, mask=row_ok, other=0.0)
        l_i = tl.load(s_base + NQ + offs_m, mask=row_ok, other=0.0)
        m_i = tl.where(m_i == float("-inf"), 0.0, m_i)
        n_rows = tl.minimum(NQ - r * BLOCK_SIZE, BLOCK_SIZE).to(tl.float32)
        ok = row_ok & (l_i > 0)
        w = tl.where(ok, 1.0 / (tl.where(ok, l_i, 1.0) * n_rows), 0.0)  # [BLOCK_M] 1 / (l * rows)
        idx_ptr = Indices + b * stride_ib + h * stride_ih + r * stride_ir
        k_base = K + b * stride_kb + kvh * stride_kh
        mass_base = Mass + (pid_bh * tl.cdiv(NQ, BLOCK_SIZE) + r) * NKB
        if COLS == 1:
            for it in range(first, last):
                c = tl.load(idx_ptr + (it // SUB) * stride_ik)
                p = _tile_probs(q, k_base, c, it, offs_n, offs_d, pos_m, m_i, stride_kn, stride_kd, NK,
                                qk_scale, BLOCK_SIZE, BLOCK_N, SUB)
                part = tl.sum(tl.sum(p, 1) * w, 0)
                tl.atomic_add(mass_base + c, part)
        else:  # COLS tiles' row sums side by side, then one reduction and one vector of atomic adds
            offs_g = tl.arange(0, COLS)
            for it0 in range(first, last, COLS):
                sums = tl.zeros([BLOCK_M, COLS], dtype=tl.float32)
                where = tl.full([COLS], -1, dtype=tl.int32)  # the key block of each gathered tile
                for j in tl.static_range(COLS):
                    it = tl.minimum(it0 + j, last - 1)  # past the end: the last tile again, not added
                    c = tl.load(idx_ptr + (it // SUB) * stride_ik)
                    p = _tile_probs(q, k_base, c, it, offs_n, offs_d, pos_m, m_i, stride_kn, stride_kd, NK,
                                    qk_scale, BLOCK_SIZE, BLOCK_N, SUB)
                    sums = tl.where(offs_g[None, :] == j, tl.sum(p, 1)[:, None], sums)
                    where = tl.where(offs_g == j, tl.where(it0 + j < last, c, -1), where)
                part = tl.sum(sums * w[:, None], 0)  # [COLS]
                tl.atomic_add(mass_base + where, part, mask=where >= 0)


@triton.jit
def _tile_probs(q, k_base, c, it, offs_n, offs_d, pos_m, m_i, stride_kn, stride_kd, NK, qk_scale,
                BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, SUB: tl.constexpr):
    """``exp2`` of kept tile ``it`` (key block ``c``)'s scaled logits less the row max: ``[BLOCK_M, BLOCK_N]``,
    zero where the causal mask or the keys' end cuts."""
    cols = c * BLOCK_SIZE + (it % SUB) * BLOCK_N + offs_n
    kt = tl.load(k_base + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                 mask=cols[None, :] < NK, other=0.0)  # [HEAD_DIM, BLOCK_N]
    qk = tl.dot(q, kt) * qk_scale
    qk = tl.where(cols[None, :] <= pos_m[:, None], qk, float("-inf"))
    return tl.math.exp2(qk - m_i[:, None])


def stats_from_lse(lse: torch.Tensor) -> torch.Tensor:
    """Row statistics ``[B, H, 2, Nq]`` fp32 (contiguous, what ``launch_block_mass`` reads) from a
    natural-log log-sum-exp ``lse`` ``[B, H, Nq]`` of the scaled logits ``qk * scale``.

    The pass computes ``p = exp2(qk * scale * log2(e) - m) / l``; with ``m = lse * log2(e)`` and
    ``l = 1`` that is ``exp(qk * scale - lse)``, the softmax itself (no row max is needed: ``lse`` is
    at least the max, so the exponent stays at most 0). A row whose ``lse`` is not finite (it keeps
    no key: -inf, or +inf / NaN from a kernel that writes those) gets ``m = -inf, l = 0``, as the
    forward kernel leaves it, and adds nothing to the map. Plain torch, no host sync."""
    lse = lse.float()
    seen = torch.isfinite(lse)
    m = torch.where(seen, lse * LOG2E, float("-inf"))
    return torch.stack([m, seen.float()], dim=2).contiguous()  # [B, H, 2, Nq]


@on_input_device
def launch_block_mass(q: torch.Tensor, k: torch.Tensor, stats: torch.Tensor, layout: BlockLayout,
                      qk_scale: float, cfg: AttnConfig, wanted: torch.Tensor | None = None) -> torch.Tensor:
    """Mass map ``[B, H, nqb, nkb]`` fp32 from the forward pass's row statistics ``stats``.

    ``wanted``: optional bool ``[B, H]``; heads that are False get zeros and cost no K reads."""
    bsz, heads, nq, dim = q.shape
    mass = torch.zeros((bsz, heads, layout.num_q_blocks, layout.num_kv_blocks),
                       dtype=torch.float32, device=q.device)
    if wanted is None:
        wanted = torch.ones((bsz, heads), dtype=torch.int32, device=q.device)
    wanted = wanted.to(device=q.device, dtype=torch.int32).contiguous()
    cols = gathered_tiles(dim, cfg.block_n, q.element_size())
    tiles = layout.indices.shape[-1] * (layout.block_size // cfg.block_n)  # the widest row's, at most
    shares = triton.cdiv(tiles, MASS_SPLIT) if MASS_SPLIT > 0 else 1
    grid = (bsz * heads, triton.cdiv(nq, cfg.block_m), shares)
    block_mass_kernel[grid](
        q, k, stats, mass, layout.counts, layout.indices, wanted,
        *q.stride(), *k.stride(),
        layout.counts.stride(0), layout.counts.stride(1), *layout.indices.stride(),
        heads, heads // k.shape[1], nq, k.shape[2], layout.num_kv_blocks, qk_scale,
        BLOCK_SIZE=layout.block_size, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, HEAD_DIM=dim,
        SPLIT=MASS_SPLIT, COLS=cols, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return mass


def gathered_tiles(head_dim: int, block_n: int, elem_bytes: int) -> int:
    """Tiles a program of the two-pass map gathers (``MASS_COLS``), halved until their key tiles fit
    in ``MASS_COLS_BYTES``; at least 1."""
    if MASS_COLS < 1 or MASS_COLS & (MASS_COLS - 1):
        raise ValueError(f"MASS_COLS must be a power of two, got {MASS_COLS}")
    cols = MASS_COLS
    while cols > 1 and cols * head_dim * block_n * elem_bytes > MASS_COLS_BYTES:
        cols //= 2
    return cols


def mass_from_tile_lse(lse: torch.Tensor, stats: torch.Tensor, layout: BlockLayout, heads: torch.Tensor,
                       sub: int, max_temp_bytes: int = 1 << 30) -> torch.Tensor:
    """One-pass block-mass map ``[B, H, nqb, nkb]`` from the forward kernel's per-tile row sums.

    ``lse`` ``[S, KT, NQP]`` holds, for each mapped head (slot s, flat head id ``heads[s]`` =
    ``b * H + h``), kept tile ``t`` (``sub`` tiles per kept block) and query row ``i``, the
    log2-sum-exp2 of the tile's scaled logits; ``stats`` ``[B, H, 2, NQ]`` the final row max
    (log2 domain) and sum. A row's mass on a tile is ``2^(lse - m - log2 l)``; block mass is the
    mean over the block's valid rows of the sum over its tiles. Entries the kernel did not write
    (rows past NQ, tiles past a row's count) are masked out. Works on slots in chunks so the
    temporaries stay under ``max_temp_bytes``."""
    bsz, nh, nqb = layout.counts.shape
    nkb, bs, nq = layout.num_kv_blocks, layout.block_size, layout.nq
    mass = torch.zeros((bsz * nh, nqb, nkb + 1), dtype=torch.float32, device=lse.device)
    n_slots, kt, nqp = lse.shape
    rows_in_block = torch.clamp(nq - torch.arange(nqb, device=lse.device) * bs, max=bs).float()
    step = max(1, max_temp_bytes // max(1, kt * nqp * 4))
    for s0 in range(0, n_slots, step):
        ids = heads[s0:s0 + step]
        st = stats.reshape(bsz * nh, 2, nq)[ids]  # [s, 2, NQ]
        row_lse = st[:, 0] + torch.log2(st[:, 1])  # [s, NQ]; -inf where a row sees nothing
        row_lse = torch.nn.functional.pad(row_lse, (0, nqp - nq), value=float("inf"))
        part = torch.exp2(lse[s0:s0 + step] - row_lse[:, None, :])  # [s, KT, NQP]
        counts = layout.counts.reshape(bsz * nh, nqb)[ids]  # [s, nqb]
        valid = torch.arange(kt, device=lse.device)[None, :, None] < (counts * sub)[:, None, :]
        part = part.reshape(len(ids), kt, nqb, bs).nan_to_num_(0.0, 0.0, 0.0)
        part = torch.where(valid[..., None], part, 0.0).sum(-1)  # [s, KT, nqb]
        part = part.reshape(len(ids), kt // sub, sub, nqb).sum(2) / rows_in_block  # [s, K, nqb]
        cols = layout.indices.reshape(bsz * nh, nqb, -1)[ids].long()  # [s, nqb, K]
        cols = torch.where(cols >= 0, cols, nkb)
        mass[ids] = mass[ids].scatter_add_(-1, cols, part.transpose(1, 2))
    return mass[..., :nkb].reshape(bsz, nh, nqb, nkb)
