"""Plain-torch reference twins of the kernels: fp32 maths, slow on purpose, easy to read.

Conventions shared by every kernel and twin:

* q is ``[B, H, Nq, D]``; k and v are ``[B, H_kv, Nk, D]`` with ``H % H_kv == 0``.
  Query head ``h`` reads KV head ``h // (H // H_kv)`` (grouped-query attention).
* ``Nq <= Nk``: queries are aligned to the *end* of the keys (chunked prefill), so query row
  ``i`` sits at absolute position ``i + (Nk - Nq)`` and may attend keys ``j <= i + Nk - Nq``.
* Blocks are counted from the start of each tensor: query block ``r`` holds query rows
  ``[r*B, (r+1)*B)``, key block ``c`` holds keys ``[c*B, (c+1)*B)``; the last block of each
  may be partial.
* The *probe* is the last ``min(B, Nq)`` query rows (always a full block when one exists,
  whatever the alignment of ``Nq`` to ``B``).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

from .limits import DEFAULT_CHUNK_SIZE


def num_blocks(n: int, block_size: int) -> int:
    return (n + block_size - 1) // block_size


def causal_token_mask(nq: int, nk: int, device: torch.device) -> torch.Tensor:
    """Bool ``[Nq, Nk]``: True where query row i may see key j (end-aligned causal)."""
    rows = torch.arange(nq, device=device)[:, None] + (nk - nq)
    cols = torch.arange(nk, device=device)[None, :]
    return cols <= rows


def expand_kv(x: torch.Tensor, num_q_heads: int) -> torch.Tensor:
    """Repeat KV heads to match query heads (reference only; kernels read through the group index)."""
    groups = num_q_heads // x.shape[1]
    return x.repeat_interleave(groups, dim=1) if groups > 1 else x


def _scale(q: torch.Tensor, scale: float | None) -> float:
    return scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])


def masked_logits_ref(q, k, scale=None, mask=None) -> torch.Tensor:
    """Scaled causal logits, fp32, ``[B, H, Nq, Nk]``, -inf where masked; ``mask`` is extra bool keep-mask."""
    keep = causal_token_mask(q.shape[2], k.shape[2], q.device)
    if mask is not None:
        keep = keep & mask
    logits = torch.matmul(q.float(), expand_kv(k, q.shape[1]).float().transpose(-1, -2))
    logits = logits * _scale(q, scale)
    return logits.masked_fill(~keep, float("-inf"))


def attention_probs_ref(q, k, scale=None, mask=None) -> torch.Tensor:
    """Softmax attention probabilities, fp32, ``[B, H, Nq, Nk]``; ``mask`` is extra bool keep-mask."""
    probs = torch.softmax(masked_logits_ref(q, k, scale, mask), dim=-1)
    return torch.nan_to_num(probs, nan=0.0)  # rows with nothing kept attend to nothing


def block_mask_to_token_mask(block_mask: torch.Tensor, nq: int, nk: int, block_size: int) -> torch.Tensor:
    """``[B, H, nqb, nkb]`` bool block mask -> ``[B, H, Nq, Nk]`` bool token mask (no causality)."""
    expanded = block_mask.repeat_interleave(block_size, dim=2).repeat_interleave(block_size, dim=3)
    return expanded[:, :, :nq, :nk]


def pool_rows_mean(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Mean over consecutive row blocks of dim -2 (partial last block: mean of what it holds)."""
    n = x.shape[-2]
    nb = num_blocks(n, block_size)
    pad = nb * block_size - n
    padded = torch.nn.functional.pad(x.float(), (0, 0, 0, pad))
    sums = padded.reshape(*x.shape[:-2], nb, block_size, x.shape[-1]).sum(-2)
    # rows per block, built on the device (no host-to-device copy: CUDA graphs record this twin)
    counts = torch.clamp(n - torch.arange(nb, device=x.device) * block_size, max=block_size).float()
    return sums / counts[:, None]


def pool_cols_sum(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Sum over consecutive blocks of the last dim (zero-padded)."""
    n = x.shape[-1]
    nb = num_blocks(n, block_size)
    padded = torch.nn.functional.pad(x, (0, nb * block_size - n))
    return padded.reshape(*x.shape[:-1], nb, block_size).sum(-1)


def block_mass_from_probs(probs: torch.Tensor, block_size: int) -> torch.Tensor:
    """``[..., Nq, Nk]`` probabilities -> block-mass map ``[..., nqb, nkb]`` (rows sum to 1)."""
    return pool_rows_mean(pool_cols_sum(probs, block_size), block_size)


def attention_ref(q, k, v, scale=None, mask=None) -> torch.Tensor:
    """Causal attention output ``[B, H, Nq, D]`` in fp32, optional extra bool keep-mask."""
    probs = attention_probs_ref(q, k, scale, mask)
    return torch.matmul(probs, expand_kv(v, q.shape[1]).float())


def block_sparse_attention_ref(q, k, v, block_mask, block_size, scale=None, return_block_mass=False):
    """Twin of ``block_sparse_attention`` from a dense bool block mask ``[B, H, nqb, nkb]``.

    Returns the fp32 output ``[B, H, Nq, D]`` and, if asked, the block-mass map of the sparse
    softmax ``[B, H, nqb, nkb]`` (for a full mask: the exact map).
    """
    nq, nk = q.shape[2], k.shape[2]
    keep = block_mask_to_token_mask(block_mask.bool(), nq, nk, block_size)
    probs = attention_probs_ref(q, k, scale, keep)
    out = torch.matmul(probs, expand_kv(v, q.shape[1]).float())
    if return_block_mass:
        return out, block_mass_from_probs(probs, block_size)
    return out


def _sparse_logits(q, k, block_mask, block_size, scale):
    """Scaled fp32 logits ``[B, H, Nq, Nk]`` with -inf outside the kept blocks and the causal mask."""
    keep = block_mask_to_token_mask(block_mask.bool(), q.shape[2], k.shape[2], block_size)
    return masked_logits_ref(q, k, scale, keep)


def sparse_lse_ref(q, k, block_mask, block_size, scale=None) -> torch.Tensor:
    """Twin of the ``flash`` backend's log-sum-exp (``flash_sparse_attention(..., return_lse=True)``):
    natural-log ``logsumexp`` of each row's scaled logits over its kept, visible keys, ``[B, H, Nq]``
    fp32; -inf for a row that keeps none."""
    return torch.logsumexp(_sparse_logits(q, k, block_mask, block_size, scale), dim=-1)


def block_mass_from_stats_ref(q, k, stats, block_mask, block_size, scale=None, wanted=None) -> torch.Tensor:
    """Twin of ``mass_pass.launch_block_mass``: the block-mass map ``[B, H, nqb, nkb]`` fp32 of the
    kept blocks, normalised with given row statistics ``stats`` ``[B, H, 2, Nq]`` (row max in the
    log2 domain of ``qk * scale * log2(e)``, row sum): ``p = exp2(qk * scale * log2(e) - m) / l``,
    0 where ``l`` is 0. Only the heads ``wanted`` (bool ``[B, H]``) when given; zeros elsewhere."""
    logits = _sparse_logits(q, k, block_mask, block_size, scale) * (1.0 / math.log(2.0))  # log2 domain
    m, l = stats[:, :, 0].float(), stats[:, :, 1].float()
    seen = (l > 0)[..., None]  # [B, H, Nq, 1]
    m = torch.where(torch.isfinite(m), m, 0.0)[..., None]
    probs = torch.where(seen, torch.exp2(logits - m) / torch.where(seen, l[..., None], 1.0), 0.0)  # [B, H, Nq, Nk]
    mass = block_mass_from_probs(probs, block_size)
    return mass if wanted is None else torch.where(wanted.to(mass.device)[..., None, None], mass, 0.0)


def block_mass_ref(q, k, block_size, scale=None, chunk_size=DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """Exact dense causal block-mass map ``[B, H, nqb, nkb]`` computed over query chunks.

    Extra memory is ``O(B * H * chunk_size * Nk)``, never ``O(H * Nq * Nk)``. ``chunk_size`` is
    rounded up to a multiple of ``block_size`` so a query block never straddles two chunks.
    """
    nq, nk = q.shape[2], k.shape[2]
    chunk = max(block_size, (chunk_size // block_size) * block_size)
    kx = expand_kv(k, q.shape[1]).float().transpose(-1, -2)  # [B, H, D, Nk]
    s = _scale(q, scale)
    keys = torch.arange(nk, device=q.device)
    rows = []
    nkb = num_blocks(nk, block_size)
    for start in range(0, nq, chunk):
        qc = q[:, :, start:start + chunk].float()  # [B, H, c, D]
        visible = start + qc.shape[2] + (nk - nq)  # keys past this are in every row's future
        logits = torch.matmul(qc, kx[..., :visible]) * s  # [B, H, c, visible]
        pos = torch.arange(start, start + qc.shape[2], device=q.device) + (nk - nq)
        logits.masked_fill_(keys[None, :visible] > pos[:, None], float("-inf"))
        mass = block_mass_from_probs(torch.softmax(logits, dim=-1), block_size)
        rows.append(torch.nn.functional.pad(mass, (0, nkb - mass.shape[-1])))
    return torch.cat(rows, dim=2)


def last_block_profiles_ref(q, k, block_size, scale=None):
    """Vertical and slash profiles of the probe (last ``min(B, Nq)`` queries), fp32.

    Returns ``(vertical, slash)``, each ``[B, H, Nk]`` and summing to 1 over the last dim:
    ``vertical[j]`` is the mean attention key j receives from the probe queries;
    ``slash[o]`` is the mean attention along diagonal offset ``o = position(query) - j``.
    """
    nq, nk = q.shape[2], k.shape[2]
    m = min(block_size, nq)
    probs = attention_probs_ref(q[:, :, nq - m:], k, scale)  # [B, H, m, Nk]
    vertical = probs.mean(dim=2)
    pos = torch.arange(nk - m, nk, device=q.device)  # absolute positions of probe queries
    offsets = pos[:, None] - torch.arange(nk, device=q.device)[None, :]  # [m, Nk]
    valid = offsets >= 0
    idx = offsets.clamp(min=0).expand(*probs.shape[:2], m, nk)
    slash = torch.zeros_like(probs).scatter_add_(-1, idx, probs * valid).sum(dim=2) / m
    return vertical, slash


def last_block_pooled_profiles_ref(q, k, block_size, scale=None):
    """Twin of ``last_block_pooled_profiles``: the probe profiles summed into key blocks (vertical)
    and offset blocks (slash), each ``[B, H, nkb]``."""
    vertical, slash = last_block_profiles_ref(q, k, block_size, scale)
    return pool_cols_sum(vertical, block_size), pool_cols_sum(slash, block_size)


@functools.lru_cache(maxsize=64)
def causal_block_mask(nq: int, nk: int, block_size: int, device: torch.device) -> torch.Tensor:
    """Bool ``[nqb, nkb]``: True where key block c holds a key visible to some query of block r.

    Cached per geometry (every layer of a forward asks for the same one): never modify the result.

    With end alignment, query block r's last row sits at absolute position
    ``min((r+1)*B, Nq) - 1 + (Nk - Nq)``; block c is causal-valid when ``c*B`` is at most that.
    """
    nqb, nkb = num_blocks(nq, block_size), num_blocks(nk, block_size)
    last_row = torch.clamp((torch.arange(nqb, device=device) + 1) * block_size, max=nq) - 1
    last_pos = last_row + (nk - nq)  # [nqb]
    starts = torch.arange(nkb, device=device) * block_size  # [nkb]
    return starts[None, :] <= last_pos[:, None]


def pool_blocks_mean_ref(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Twin of ``pool_blocks_mean``: ``[B, H, N, D]`` -> block means ``[B, H, nb, D]`` fp32."""
    return pool_rows_mean(x, block_size)


def _masked_softmax(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    probs = torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)
    return torch.nan_to_num(probs, nan=0.0)


def pooled_block_estimate_ref(q, k, block_size, scale=None) -> torch.Tensor:
    """Twin of ``pooled_block_estimate``: block-level causal attention estimate, fp32.

    Block-mean queries ``[B, H, nqb, D]`` against block-mean keys ``[B, H_kv, nkb, D]`` (read
    through the group index), scaled, softmax over the causal-valid key blocks of each query
    block (``causal_block_mask``). Returns ``[B, H, nqb, nkb]``; each row sums to 1.
    """
    return pooled_estimate_of_means_ref(pool_rows_mean(q, block_size), k, q.shape[2], block_size,
                                        _scale(q, scale))


def pooled_estimate_of_means_ref(q_means, k, nq: int, block_size: int, scale=None) -> torch.Tensor:
    """Twin of ``pooled_estimate_of_means``: ``pooled_block_estimate_ref`` from the queries' block
    means ``[B, H, nqb, D]`` fp32 of ``nq`` queries (end-aligned to the keys)."""
    kp = expand_kv(pool_rows_mean(k, block_size), q_means.shape[1])  # [B, H, nkb, D]
    logits = torch.matmul(q_means, kp.transpose(-1, -2)) * _scale(q_means, scale)  # [B, H, nqb, nkb]
    return _masked_softmax(logits, causal_block_mask(nq, k.shape[2], block_size, q_means.device))


def probe_column_estimate_ref(q, k, block_size, scale=None) -> torch.Tensor:
    """Twin of ``probe_column_estimate``: pooled estimate of the probe's column distribution.

    The mean of the probe queries (last ``min(B, Nq)`` rows) against block-mean keys, scaled,
    softmax over all key blocks. Returns ``[B, H, nkb]`` fp32 summing to 1; compare it with
    ``pool_cols_sum(vertical, B)`` from ``last_block_profiles_ref``.
    """
    nq = q.shape[2]
    m = min(block_size, nq)
    qm = q[:, :, nq - m:].float().mean(dim=2, keepdim=True)  # [B, H, 1, D]
    kp = expand_kv(pool_rows_mean(k, block_size), q.shape[1])  # [B, H, nkb, D]
    logits = torch.matmul(qm, kp.transpose(-1, -2)) * _scale(q, scale)  # [B, H, 1, nkb]
    return torch.softmax(logits, dim=-1)[:, :, 0]


# Block geometry, cached per (lengths, block size, device): every layer of a forward pass
# asks for the same tensors, and rebuilding them costs kernel launches. Never modify their results.
@functools.lru_cache(maxsize=64)
def query_block_positions(nq: int, nk: int, block_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute key-block index of the first and last query of each query block: ``[nqb]`` x 2."""
    nqb = num_blocks(nq, block_size)
    first = torch.arange(nqb, device=device) * block_size
    last = torch.clamp(first + block_size, max=nq) - 1
    offset = nk - nq
    return (first + offset) // block_size, (last + offset) // block_size


@functools.lru_cache(maxsize=64)
def diagonal_block_mask(nq: int, nk: int, block_size: int, device) -> torch.Tensor:
    """Bool ``[nqb, nkb]``: the key blocks that hold each query block's own positions."""
    lo, hi = query_block_positions(nq, nk, block_size, device)
    cols = torch.arange(num_blocks(nk, block_size), device=device)
    return (cols[None, :] >= lo[:, None]) & (cols[None, :] <= hi[:, None])


@functools.lru_cache(maxsize=64)
def always_kept(nq: int, nk: int, block_size: int, device) -> torch.Tensor:
    """Bool ``[nqb, nkb]``: key block 0 (the attention sink) and the block diagonal."""
    mask = diagonal_block_mask(nq, nk, block_size, device).clone()
    mask[:, 0] = True
    return mask & causal_block_mask(nq, nk, block_size, device)


def slash_to_blocks(diagonals: torch.Tensor, nq: int, nk: int, block_size: int) -> torch.Tensor:
    """Kept block diagonals ``[B, H, nd]`` (offset blocks d: token offsets [dB, (d+1)B)) ->
    bool ``[B, H, nqb, nkb]``. Offset block d reaches key blocks (r - d - 1) and (r - d) of a
    query block whose positions lie in key block r."""
    lo, hi = query_block_positions(nq, nk, block_size, diagonals.device)
    cols = torch.arange(num_blocks(nk, block_size), device=diagonals.device)
    nd = diagonals.shape[-1]
    keep = torch.zeros(*diagonals.shape[:2], lo.shape[0], cols.shape[0], dtype=torch.bool,
                       device=diagonals.device)
    for row_block, shift in ((lo, 0), (lo, -1), (hi, 0)):
        d = row_block[:, None] - cols[None, :] + shift  # [nqb, nkb]
        valid = (d >= 0) & (d < nd)
        picked = diagonals.gather(-1, d.clamp(0, nd - 1).reshape(1, 1, -1)
                                  .expand(*diagonals.shape[:2], -1)).reshape(keep.shape)
        keep |= picked & valid
    return keep


def assemble_masks_ref(v_rank, s_rank, v_count, s_count, nq: int, nk: int, block_size: int, *,
                       minimal=None, query_aware=None, share=None, tail_first: int | None = None):
    """Twin of ``decide.assemble_kernel``'s masks: ``(mask, own)``, bool ``[B, H, nqb, nkb]``.

    ``own``: the vertical-slash mask of ranks ``v_rank``/``s_rank`` ``[B, H, nkb]`` (0 = highest
    column / block diagonal) cut at ``v_count``/``s_count`` ``[B, H]``, plus sink and diagonal,
    causal. ``mask`` starts as ``own``; then, each optional and in this order:
    ``minimal`` = ``(v_count, s_count)`` of the minimal vertical-slash mask that the two below add
    to; ``query_aware`` = ``(flag [B, H], rank [B, H, nqb, nkb], count [B, H, nqb])``: flagged heads
    keep each row's blocks of rank below its count, plus the minimal mask; ``share`` =
    ``(shared [B, H], pivotal [B, H], pattern [B, H, nqb, nkb], last_row)``: shared heads keep the
    pattern plus the minimal mask (and, in the last row, the blocks of ``last_row`` =
    ``(rank [B, H, nkb], count [B, H])`` when given), pivotal heads every causal block. Rows from
    ``tail_first`` on keep every causal block."""
    causal = causal_block_mask(nq, nk, block_size, v_rank.device)
    base = always_kept(nq, nk, block_size, v_rank.device)

    def vertical_slash(vc, sc):
        columns = v_rank < vc[..., None]
        diagonals = s_rank < sc[..., None]
        return (columns[:, :, None, :] | slash_to_blocks(diagonals, nq, nk, block_size) | base) & causal

    own = vertical_slash(v_count, s_count)
    mask = own
    if minimal is not None:
        least = vertical_slash(*minimal)
        if query_aware is not None:
            flag, rank, count = query_aware
            mask = torch.where(flag[..., None, None], (rank < count[..., None]) | least, mask)
        if share is not None:
            shared, pivotal, pattern, last_row = share
            borrowed = pattern | least
            if last_row is not None:
                borrowed[:, :, -1, :] |= last_row[0] < last_row[1][..., None]
            mask = torch.where(shared[..., None, None], borrowed, mask)
            mask = torch.where(pivotal[..., None, None], causal, mask)
    if tail_first is not None:
        rows = torch.arange(mask.shape[-2], device=mask.device) >= tail_first
        mask = mask | (causal & rows[:, None])
    return mask, own


# ---- per-head decisions (twin of kernels/heads.py) ---------------------------------------------

class Ranked(NamedTuple):
    """One descending sort of a batch of scores ``[..., n]``, shared by a budget and a top-k."""

    ordered: torch.Tensor  # the scores in descending order (NaN counted as -1), fp32
    ranks: torch.Tensor  # rank of each entry (0 = highest; ties: lower index first), int64


def rank_desc(scores: torch.Tensor) -> Ranked:
    """Sort each row of ``scores`` ``[..., n]`` once, descending and stable (NaN as -1)."""
    ordered, order = torch.sort(torch.nan_to_num(scores.float(), nan=-1.0), dim=-1, descending=True,
                                stable=True)
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(scores.shape[-1], device=scores.device)
                                             .expand_as(order).contiguous())
    return Ranked(ordered, ranks)


def budget_of(ranked: Ranked, gamma: float, min_count: int) -> torch.Tensor:
    """Fewest top-ranked entries whose mass reaches ``gamma`` of the row's (NaN and negatives count
    as zero), at least ``min_count`` and at most n: int64 ``[...]``."""
    ordered = ranked.ordered.clamp_min(0)
    before = torch.cumsum(ordered, dim=-1) - ordered
    count = (before < gamma * ordered.sum(-1, keepdim=True)).sum(-1)
    n = ordered.shape[-1]
    return count.clamp(min=min(min_count, n), max=n)


def clean_mass(x: torch.Tensor) -> torch.Tensor:
    """fp32 copy with NaN, infinities and negative values replaced by zero."""
    x = torch.nan_to_num(x.float(), nan=0.0, posinf=0.0, neginf=0.0)
    return x.clamp_min(0.0)


def coverage_counts_ref(block_mass: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ranks, count)``: each block's rank in its row (descending cleaned mass, ties towards the
    lower index; ``[..., nkb]``) and how many top-ranked blocks reach ``gamma`` of the row's mass
    (never a zero-mass block; ``[...]``)."""
    mass = clean_mass(block_mass)
    ranked = rank_desc(mass)
    before = torch.cumsum(ranked.ordered, dim=-1) - ranked.ordered
    target = gamma * mass.sum(dim=-1, keepdim=True)
    count = ((before < target) & (ranked.ordered > 0)).sum(-1)  # a prefix of the sorted row
    return ranked.ranks, count


def coverage_rows_ref(mass: torch.Tensor, gamma: float, wanted: torch.Tensor | None = None):
    """Twin of ``heads.coverage_rows_kernel``: ``coverage_counts_ref`` of every row of ``mass``
    ``[B, H, R, n]``; with ``wanted`` ``[B, H]`` only those heads' rows count (the others get count
    0, and their ranks are not meaningful: the kernel does not write them)."""
    rank, count = coverage_counts_ref(mass, gamma)
    if wanted is not None:
        count = torch.where(wanted[..., None], count, 0)
    return rank, count


def js_distance(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Square-root Jensen-Shannon distance (base 2, in [0, 1]) between matching rows ``[..., n]``.

    NaN-safe: inputs are cleaned and renormalised with ``eps``, so 0 log 0 never occurs and an
    all-zero row is treated as uniform."""
    def norm(x):
        x = torch.nan_to_num(x.float(), nan=0.0).clamp_min(0) + eps
        return x / x.sum(-1, keepdim=True)

    p, q = norm(p), norm(q)
    m = 0.5 * (p + q)
    js = 0.5 * (p * (p / m).log2()).sum(-1) + 0.5 * (q * (q / m).log2()).sum(-1)
    return js.clamp(0, 1).sqrt()


class ShareState(NamedTuple):
    """SharePrefill's per-forward state as the decisions read it (analysis/method/sharing.py);
    ``C`` clusters, ``[B, C]`` unless said otherwise."""

    cluster: torch.Tensor  # [H] int64: the layer's shared cluster of each head, -1 for none
    exists: torch.Tensor  # bool: the cluster has a pivotal pattern from an earlier layer
    vs_enough: torch.Tensor  # bool: that pivotal's own vertical-slash mask covered tau_fb of its mass
    v: torch.Tensor  # [B, C, nkb] the pivotal's pooled vertical profile
    s: torch.Tensor  # [B, C, nkb] its pooled slash profile
    source: torch.Tensor  # [B, C, 2] int64 (layer, head) of the pivotal
    tau_s: float  # the sharing test's threshold on both profiles' distances


class HeadDecisions(NamedTuple):
    """What each head of a layer decides from its pooled profiles: ``[B, H]`` unless said
    otherwise; ranks and counts are int64, flags bool."""

    v_rank: torch.Tensor  # [B, H, nkb] rank of each key-block column (``rank_desc``)
    s_rank: torch.Tensor  # [B, H, nkb] rank of each block diagonal
    v_count: torch.Tensor  # the vertical budget at gamma (or the fixed one)
    s_count: torch.Tensor  # the slash budget
    decision: torch.Tensor  # int8 decision codes (``codes`` of ``head_decisions_ref``)
    qa: torch.Tensor  # query-aware (estimate far from the probe), all False without an estimate
    pivotal: torch.Tensor  # SharePrefill: runs dense, its map becomes its cluster's pattern
    shared: torch.Tensor  # SharePrefill: uses its cluster's pivotal pattern
    source: torch.Tensor  # [B, H, 2] (layer, head) a shared head takes its pattern from, else -1
    cid: torch.Tensor  # the state slot of each head's cluster (0 for heads in none)
    lr_rank: torch.Tensor | None  # [B, H, nkb] ``coverage_counts_ref`` of the vertical profile
    lr_count: torch.Tensor | None  # its count at gamma


def share_decisions_ref(state: ShareState, candidates: torch.Tensor, v_blocks: torch.Tensor,
                        s_blocks: torch.Tensor):
    """SharePrefill's online sharing test (docs/method.md, step 4): ``(pivotal, shared, source, cid)``
    for ``candidates`` ``[B, H]`` (non-query-aware heads) with pooled profiles ``[B, H, nkb]``.
    A candidate in a cluster without a pivotal yet is pivotal unless a lower head of the cluster
    is a candidate too; one in a cluster with a pivotal shares when both its profiles are within
    ``tau_s`` of the pivotal's and that pivotal's own vertical-slash mask was not enough."""
    b, h = candidates.shape
    cluster = state.cluster
    in_cluster = cluster >= 0
    cid = cluster.clamp(min=0)[None, :].expand(b, h)
    cand = candidates & in_cluster[None, :]
    had = state.exists.gather(1, cid) & cand  # pivotal from an earlier layer
    fresh = cand & ~had
    earlier = torch.ones(h, h, dtype=torch.bool, device=cluster.device).tril(-1)
    same = (cluster[:, None] == cluster[None, :]) & in_cluster[:, None]  # [H, H]
    beaten = (fresh[:, None, :] & (same & earlier)[None]).any(-1)  # a lower head claims it
    pivotal = fresh & ~beaten
    idx = cid[..., None].expand_as(v_blocks)
    theirs = torch.stack([state.v.gather(1, idx), state.s.gather(1, idx)])
    close = (js_distance(torch.stack([v_blocks, s_blocks]), theirs) < state.tau_s).all(0)
    shared = had & close & ~state.vs_enough.gather(1, cid)
    source = state.source.gather(1, cid[..., None].expand(b, h, 2))
    source = torch.where(shared[..., None], source, torch.full_like(source, -1))
    return pivotal, shared, source, cid


def mass_covered(mask: torch.Tensor, block_mass: torch.Tensor) -> torch.Tensor:
    """Share of a block-mass map ``[B, H, nqb, nkb]`` inside a mask, averaged over rows: ``[B, H]``.
    Each valid block counts once (a bool mask has no duplicates)."""
    return (block_mass * mask.float()).sum(-1).mean(-1)


class PivotalStore(NamedTuple):
    """Where SharePrefill keeps its pivotal heads' patterns for one forward pass
    (analysis/method/sharing.py), written in place; ``C`` clusters, ``[B, C]`` unless said otherwise."""

    exists: torch.Tensor  # bool: the cluster has a pivotal pattern
    vs_enough: torch.Tensor  # bool: the pivotal's own vertical-slash mask covered tau_fb of its mass
    pattern: torch.Tensor  # [B, C, nqb, nkb] bool: the pivotal's exact pattern (coverage at gamma)
    v: torch.Tensor  # [B, C, nkb] float32: its pooled vertical profile
    s: torch.Tensor  # [B, C, nkb] float32: its pooled slash profile
    source: torch.Tensor  # [B, C, 2] int64: (layer, head) of the pivotal


def record_pivotals_ref(store: PivotalStore, cluster: torch.Tensor, layer: torch.Tensor, pivotal: torch.Tensor,
                        rank: torch.Tensor, count: torch.Tensor, block_mass: torch.Tensor,
                        own_vs_mask: torch.Tensor, v_blocks: torch.Tensor, s_blocks: torch.Tensor,
                        tau_fb: float, needs_sparser: bool = False) -> None:
    """Twin of ``heads.record_pivotals_kernel``: each pivotal head (``pivotal`` ``[B, H]``) writes
    its cluster's slot (``cluster`` ``[H]``, the layer's row of the table, clamped at 0) of
    ``store``: the pattern ``rank < count`` (``coverage_rows_ref`` of its block-mass map, ``rank``
    ``[B, H, nqb, nkb]``, ``count`` ``[B, H, nqb]``), its pooled profiles ``[B, H, nkb]``, whether
    its own vertical-slash mask ``own_vs_mask`` covers ``tau_fb`` of ``block_mass`` (mean over rows
    of the mass inside the mask; with ``needs_sparser`` also keeping no more blocks than the
    pattern), that the slot exists, and ``(layer, head)`` as its source (``layer``: 0-d int64).
    At most one pivotal per (batch element, cluster), as the sharing test decides; other slots are
    left as they are."""
    b, h = pivotal.shape
    c = store.pattern.shape[1]
    cid = cluster.clamp(min=0)[None, :].expand(b, h)
    slot = torch.where(pivotal, cid, torch.full_like(cid, c))  # non-pivotal heads write a dump slot

    def put(target: torch.Tensor, values: torch.Tensor) -> None:  # in place: storage is kept
        extra = torch.zeros_like(target[:, :1]).expand(b, 1, *target.shape[2:])
        padded = torch.cat([target, extra], dim=1)
        idx = slot.reshape(b, h, *([1] * (target.dim() - 2))).expand(b, h, *target.shape[2:])
        target.copy_(padded.scatter(1, idx, values.to(target.dtype))[:, :c])

    pattern = (rank < count[..., None]) & pivotal[..., None, None]
    enough = mass_covered(own_vs_mask, block_mass) >= tau_fb  # [B, H]
    if needs_sparser:
        enough &= own_vs_mask.sum(dim=(-2, -1)) <= pattern.sum(dim=(-2, -1))
    put(store.pattern, pattern)
    put(store.v, v_blocks)
    put(store.s, s_blocks)
    put(store.vs_enough, enough)
    put(store.exists, torch.ones_like(pivotal))
    heads = torch.arange(h, device=pivotal.device)[None, :].expand(b, h)
    put(store.source, torch.stack([layer.to(heads.dtype).expand(b, h), heads], dim=-1))


def head_decisions_ref(vertical: torch.Tensor, slash: torch.Tensor, *, gamma: float, min_count: int,
                       codes: tuple[int, int, int, int], v_fixed: int | None = None,
                       s_fixed: int | None = None, estimate: torch.Tensor | None = None,
                       tau_qa: float | None = None, share: ShareState | None = None,
                       last_row: bool = False) -> HeadDecisions:
    """Twin of ``heads.head_decisions_kernel``: per head, from the probe's pooled ``vertical`` and
    ``slash`` profiles ``[B, H, nkb]``: their ranks, the vertical-slash budgets at ``gamma`` (at
    least ``min_count`` blocks; ``v_fixed``/``s_fixed`` replace them), query-aware when
    ``estimate`` ``[B, H, nkb]`` is farther than ``tau_qa`` from the vertical profile (JS
    distance), SharePrefill's sharing test against ``share``, and the last-row coverage of the
    vertical profile (``last_row``). ``codes``: the decision codes of (vertical-slash,
    query-aware, shared, pivotal)."""
    b, h, _ = vertical.shape
    dev = vertical.device
    ranked_v, ranked_s = rank_desc(vertical), rank_desc(slash)
    v_count, s_count = budget_of(ranked_v, gamma, min_count), budget_of(ranked_s, gamma, min_count)
    if v_fixed is not None:
        v_count = torch.full_like(v_count, v_fixed)
    if s_fixed is not None:
        s_count = torch.full_like(s_count, s_fixed)
    no = torch.zeros((b, h), dtype=torch.bool, device=dev)
    qa = js_distance(estimate, vertical) < tau_qa if estimate is not None else no
    code_vs, code_qa, code_shared, code_pivotal = codes
    decision = torch.where(qa, code_qa, code_vs)
    pivotal = shared = no
    source = torch.full((b, h, 2), -1, dtype=torch.long, device=dev)
    cid = torch.zeros((b, h), dtype=torch.long, device=dev)
    if share is not None:
        pivotal, shared, source, cid = share_decisions_ref(share, ~qa, vertical, slash)
        decision = torch.where(shared, code_shared, decision)
        decision = torch.where(pivotal, code_pivotal, decision)
    lr_rank, lr_count = coverage_counts_ref(vertical, gamma) if last_row else (None, None)
    return HeadDecisions(ranked_v.ranks, ranked_s.ranks, v_count, s_count, decision.to(torch.int8), qa,
                         pivotal, shared, source, cid.contiguous(), lr_rank, lr_count)
