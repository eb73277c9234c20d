"""Every head's decision of one layer in one launch (Triton): docs/method.md, steps 2-4.

From the probe's pooled vertical and slash profiles ``[B, H, nkb]`` (and FlexPrefill's column
estimate), one program per (batch, head) sorts both profiles (one bitonic sort of a packed
value-and-index key each: descending, ties towards the lower index, so the ranks are
``torch.sort(stable=True)``'s), stores their ranks, takes the vertical-slash budgets from the
running sums of the sorted masses, tests query-awareness (JS distance of the estimate to the
vertical profile), runs SharePrefill's sharing test against the state of earlier layers and, for
shared heads, ranks the vertical profile once more for their own last-row coverage. In torch this
was about a hundred small launches per layer (``reference.head_decisions_ref``, the twin).
After the attention, ``coverage_rows_kernel`` ranks the rows of the pivotal heads' block-mass maps
and ``record_pivotals_kernel`` writes their patterns into SharePrefill's state (twin
``reference.record_pivotals_ref``; about 45 torch launches before).

Rounding: budgets and coverage counts compare running sums with ``gamma`` times the total, and
the distances sum logarithms; Triton's reductions add in another order than torch's, so a budget
can differ by one block and a threshold test can flip where a sum lands within float32 rounding
of its target (the tests use masses that sum exactly, and compare distances away from the
threshold). Sorting and ranks are exact.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .decide import _u8
from .device import on_input_device
from .reference import HeadDecisions, PivotalStore, ShareState

FLT_MAX = tl.constexpr(3.4028234663852886e38)


@triton.jit
def _sorted_desc(ptr, n, NP: tl.constexpr, CLEAN: tl.constexpr):
    """The ``n`` scores at ``ptr`` in descending order: ``(index, value)`` ``[NP]`` each, padded
    past ``n``. CLEAN: NaN, infinities and negatives count as zero (``clean_mass``); otherwise NaN
    counts as -1 and infinities as the largest finite floats (``rank_desc``)."""
    i = tl.arange(0, NP)
    ok = i < n
    x = tl.load(ptr + i, mask=ok, other=0.0).to(tl.float32)
    if CLEAN:
        x = tl.where((x != x) | (tl.abs(x) > FLT_MAX), 0.0, tl.maximum(x, 0.0))
    else:
        x = tl.where(x != x, -1.0, tl.minimum(tl.maximum(x, -FLT_MAX), FLT_MAX))
    bits = (x + 0.0).to(tl.int32, bitcast=True)  # + 0.0: -0.0 ties with 0.0, as in torch.sort
    # an order-preserving map of the float onto [0, 2^32), then the inverted index below it
    u = tl.where(bits >= 0, bits.to(tl.int64) + 2147483648, (~bits).to(tl.int64))
    key = tl.sort(tl.where(ok, (u << 31) | (n - 1 - i), -1), descending=True)
    idx = n - 1 - (key & 2147483647)
    u = key >> 31
    back = tl.where(u >= 2147483648, u - 2147483648, ~u).to(tl.int32)
    return idx, tl.where(ok, back.to(tl.float32, bitcast=True), 0.0)


@triton.jit
def _ranked_budget(ptr, rank_ptr, n, gamma, min_count, NP: tl.constexpr):
    """Store the ranks of the ``n`` scores at ``ptr`` (``rank_desc``) and return ``budget_of``:
    the fewest top-ranked entries whose mass reaches ``gamma`` of the total, clamped to
    ``[min(min_count, n), n]``."""
    i = tl.arange(0, NP)
    ok = i < n
    idx, ordered = _sorted_desc(ptr, n, NP, False)
    tl.store(rank_ptr + idx, i.to(tl.int64), mask=ok)
    ordered = tl.maximum(ordered, 0.0)
    before = tl.cumsum(ordered, 0) - ordered
    count = tl.sum((ok & (before < gamma * tl.sum(ordered, 0))).to(tl.int64), 0)
    return tl.minimum(tl.maximum(count, tl.minimum(min_count, n)), n)


@triton.jit
def _ranked_coverage(ptr, rank_ptr, n, gamma, NP: tl.constexpr):
    """Store the ranks of the ``n`` cleaned masses at ``ptr`` and return ``coverage_counts_ref``'s
    count: the fewest top-ranked blocks reaching ``gamma`` of the total, never a zero-mass one."""
    i = tl.arange(0, NP)
    ok = i < n
    idx, ordered = _sorted_desc(ptr, n, NP, True)
    tl.store(rank_ptr + idx, i.to(tl.int64), mask=ok)
    before = tl.cumsum(ordered, 0) - ordered
    target = gamma * tl.sum(ordered, 0)
    return tl.sum((ok & (before < target) & (ordered > 0)).to(tl.int64), 0)


@triton.jit
def _normalised(ptr, n, NP: tl.constexpr):
    i = tl.arange(0, NP)
    ok = i < n
    x = tl.load(ptr + i, mask=ok, other=0.0).to(tl.float32)
    x = tl.where(x != x, 0.0, tl.minimum(tl.maximum(x, 0.0), FLT_MAX)) + 1e-10
    x = tl.where(ok, x, 0.0)
    return x / tl.sum(x, 0)


@triton.jit
def _js_distance(p_ptr, q_ptr, n, NP: tl.constexpr):
    """``reference.js_distance`` of the ``n`` entries at ``p_ptr`` and ``q_ptr``."""
    p = _normalised(p_ptr, n, NP)
    q = _normalised(q_ptr, n, NP)
    ok = tl.arange(0, NP) < n
    m = tl.where(ok, 0.5 * (p + q), 1.0)
    tp = tl.where(ok, p * tl.log2(tl.where(ok, p / m, 1.0)), 0.0)
    tq = tl.where(ok, q * tl.log2(tl.where(ok, q / m, 1.0)), 0.0)
    js = 0.5 * tl.sum(tp, 0) + 0.5 * tl.sum(tq, 0)
    return tl.sqrt(tl.minimum(tl.maximum(js, 0.0), 1.0))


@triton.jit
def head_decisions_kernel(V, S, E, Cluster, Exists, VsEnough, VState, SState, SrcState,
                          VRank, SRank, VCount, SCount, Decision, Qa, Pivotal, Shared, Source, Cid,
                          LrRank, LrCount,
                          H, NKB, C, gamma, min_count, v_fixed, s_fixed, tau_qa, tau_s,
                          code_vs, code_qa, code_shared, code_pivotal,
                          NP: tl.constexpr, HAS_QA: tl.constexpr, HAS_SHARE: tl.constexpr,
                          HAS_LAST_ROW: tl.constexpr):
    bh = tl.program_id(0)
    b = bh // H
    h = bh % H
    prof = bh.to(tl.int64) * NKB
    v_count = _ranked_budget(V + prof, VRank + prof, NKB, gamma, min_count, NP)
    s_count = _ranked_budget(S + prof, SRank + prof, NKB, gamma, min_count, NP)
    if v_fixed >= 0:
        v_count = v_count * 0 + v_fixed
    if s_fixed >= 0:
        s_count = s_count * 0 + s_fixed
    tl.store(VCount + bh, v_count)
    tl.store(SCount + bh, s_count)
    qa = 0
    if HAS_QA:
        qa = (_js_distance(E + prof, V + prof, NKB, NP) < tau_qa).to(tl.int32)
    decision = tl.where(qa != 0, code_qa, code_vs)
    pivotal = 0
    shared = 0
    src0 = tl.full([], -1, tl.int64)
    src1 = tl.full([], -1, tl.int64)
    cid = 0
    if HAS_SHARE:
        c = tl.load(Cluster + h)
        cid = tl.maximum(c, 0)
        slot = b * C + cid
        cand = (qa == 0) & (c >= 0)
        exists = tl.load(Exists + slot) != 0
        if cand & ~exists:
            # a new pivotal, unless a lower head of the same cluster is a candidate too
            beaten = 0
            for j in range(0, h):
                if tl.load(Cluster + j) == c:
                    if HAS_QA:
                        other = (b * H + j).to(tl.int64) * NKB
                        beaten += (_js_distance(E + other, V + other, NKB, NP) >= tau_qa).to(tl.int32)
                    else:
                        beaten += 1
            pivotal = (beaten == 0).to(tl.int32)
        if cand & exists:
            theirs = slot.to(tl.int64) * NKB
            close = (_js_distance(V + prof, VState + theirs, NKB, NP) < tau_s) \
                & (_js_distance(S + prof, SState + theirs, NKB, NP) < tau_s)
            shared = (close & (tl.load(VsEnough + slot) == 0)).to(tl.int32)
        if shared != 0:
            src0 = tl.load(SrcState + 2 * slot)
            src1 = tl.load(SrcState + 2 * slot + 1)
        decision = tl.where(shared != 0, code_shared, decision)
        decision = tl.where(pivotal != 0, code_pivotal, decision)
        if HAS_LAST_ROW:
            tl.store(LrCount + bh, _ranked_coverage(V + prof, LrRank + prof, NKB, gamma, NP))
    tl.store(Decision + bh, decision.to(tl.int8))
    tl.store(Qa + bh, qa.to(tl.int8))
    tl.store(Pivotal + bh, pivotal.to(tl.int8))
    tl.store(Shared + bh, shared.to(tl.int8))
    tl.store(Source + 2 * bh, src0.to(tl.int64))
    tl.store(Source + 2 * bh + 1, src1.to(tl.int64))
    tl.store(Cid + bh, cid.to(tl.int64))


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 and t.is_contiguous() else t.float().contiguous()


@on_input_device
def head_decisions_triton(vertical: torch.Tensor, slash: torch.Tensor, *, gamma: float, min_count: int,
                          codes: tuple[int, int, int, int], v_fixed: int | None = None,
                          s_fixed: int | None = None, estimate: torch.Tensor | None = None,
                          tau_qa: float | None = None, share: ShareState | None = None,
                          last_row: bool = False) -> HeadDecisions:
    """Launch ``head_decisions_kernel``; arguments and result as ``reference.head_decisions_ref``."""
    b, h, nkb = vertical.shape
    dev = vertical.device
    v, s = _f32(vertical), _f32(slash)
    v_rank = torch.empty((b, h, nkb), dtype=torch.int64, device=dev)
    s_rank = torch.empty_like(v_rank)
    v_count = torch.empty((b, h), dtype=torch.int64, device=dev)
    s_count = torch.empty_like(v_count)
    decision = torch.empty((b, h), dtype=torch.int8, device=dev)
    flags = torch.empty((3, b, h), dtype=torch.bool, device=dev)  # qa, pivotal, shared
    source = torch.empty((b, h, 2), dtype=torch.int64, device=dev)
    cid = torch.empty((b, h), dtype=torch.int64, device=dev)
    want_last_row = share is not None and last_row
    lr_rank = torch.empty_like(v_rank) if want_last_row else v_rank
    lr_count = torch.empty_like(v_count) if want_last_row else v_count
    est = _f32(estimate) if estimate is not None else v
    if share is not None:
        state = (share.cluster.contiguous(), _u8(share.exists), _u8(share.vs_enough), _f32(share.v),
                 _f32(share.s), share.source.contiguous())
        clusters, tau_s = share.exists.shape[1], share.tau_s
    else:
        state, clusters, tau_s = (cid, decision, decision, v, v, source), 1, 0.0
    u8 = flags.view(torch.uint8)
    head_decisions_kernel[(b * h,)](
        v, s, est, *state, v_rank, s_rank, v_count, s_count, decision, u8[0], u8[1], u8[2], source, cid,
        lr_rank, lr_count, h, nkb, clusters, float(gamma), int(min_count),
        -1 if v_fixed is None else int(v_fixed), -1 if s_fixed is None else int(s_fixed),
        0.0 if tau_qa is None else float(tau_qa), float(tau_s), *(int(c) for c in codes),
        NP=max(16, triton.next_power_of_2(nkb)), HAS_QA=estimate is not None, HAS_SHARE=share is not None,
        HAS_LAST_ROW=want_last_row)
    return HeadDecisions(v_rank, s_rank, v_count, s_count, decision, flags[0], flags[1], flags[2], source, cid,
                         lr_rank if want_last_row else None, lr_count if want_last_row else None)


@triton.jit
def coverage_rows_kernel(Mass, Wanted, Rank, Count, R, NKB, gamma, NP: tl.constexpr, HAS_WANTED: tl.constexpr):
    """One program per (batch, head, row): ``reference.coverage_counts_ref`` of the row; rows of
    heads not wanted get count 0 and keep their ranks unwritten."""
    pid = tl.program_id(0)
    want = True
    if HAS_WANTED:
        want = tl.load(Wanted + pid // R) != 0
    if want:
        row = pid.to(tl.int64) * NKB
        tl.store(Count + pid, _ranked_coverage(Mass + row, Rank + row, NKB, gamma, NP))
    else:
        tl.store(Count + pid, tl.zeros([], tl.int64))


@on_input_device
def coverage_rows_triton(mass: torch.Tensor, gamma: float, wanted: torch.Tensor | None = None):
    """Launch ``coverage_rows_kernel``; arguments and result as ``reference.coverage_rows_ref``."""
    *lead, rows, nkb = mass.shape
    m = _f32(mass)
    rank = torch.empty(m.shape, dtype=torch.int64, device=m.device)
    count = torch.empty(m.shape[:-1], dtype=torch.int64, device=m.device)
    coverage_rows_kernel[(count.numel(),)](
        m, _u8(wanted) if wanted is not None else count, rank, count, rows, nkb, float(gamma),
        NP=max(16, triton.next_power_of_2(nkb)), HAS_WANTED=wanted is not None)
    return rank, count


@triton.jit
def record_pivotals_kernel(Pivotal, Cluster, Layer, Rank, Count, Mass, Own, VB, SB,
                           Exists, Enough, Pattern, V, S, Source, H, C, NQB, NKB, tau_fb,
                           NP: tl.constexpr, SPARSER: tl.constexpr):
    """One program per (batch, head): ``reference.record_pivotals_ref`` for a pivotal head (the
    others return at once). The head walks its rows once: the pattern ``rank < count`` stored in
    its cluster's slot, and the mass inside its own vertical-slash mask summed."""
    pid = tl.program_id(0)
    if tl.load(Pivotal + pid) != 0:
        b = pid // H
        h = pid % H
        slot = (b * C + tl.maximum(tl.load(Cluster + h), 0)).to(tl.int64)
        cols = tl.arange(0, NP)
        ok = cols < NKB
        inside = 0.0
        own_kept = 0
        kept = 0
        for r in range(0, NQB):
            src = (pid.to(tl.int64) * NQB + r) * NKB
            keep = tl.load(Rank + src + cols, mask=ok, other=NKB) < tl.load(Count + pid.to(tl.int64) * NQB + r)
            tl.store(Pattern + (slot * NQB + r) * NKB + cols, keep.to(tl.uint8), mask=ok)
            own = tl.load(Own + src + cols, mask=ok, other=0).to(tl.float32)
            inside += tl.sum(tl.load(Mass + src + cols, mask=ok, other=0.0) * own)
            if SPARSER:
                own_kept += tl.sum(own.to(tl.int32))
                kept += tl.sum((keep & ok).to(tl.int32))
        enough = inside / NQB >= tau_fb
        if SPARSER:
            enough = enough & (own_kept <= kept)
        row = pid.to(tl.int64) * NKB
        tl.store(V + slot * NKB + cols, tl.load(VB + row + cols, mask=ok), mask=ok)
        tl.store(S + slot * NKB + cols, tl.load(SB + row + cols, mask=ok), mask=ok)
        tl.store(Enough + slot, enough.to(tl.uint8))
        tl.store(Exists + slot, tl.full([], 1, tl.uint8))
        tl.store(Source + slot * 2, tl.load(Layer))
        tl.store(Source + slot * 2 + 1, h.to(tl.int64))


def record_pivotals_triton(store: PivotalStore, cluster: torch.Tensor, layer: torch.Tensor, pivotal: torch.Tensor,
                           rank: torch.Tensor, count: torch.Tensor, block_mass: torch.Tensor,
                           own_vs_mask: torch.Tensor, v_blocks: torch.Tensor, s_blocks: torch.Tensor,
                           tau_fb: float, needs_sparser: bool = False) -> None:
    """Launch ``record_pivotals_kernel``; arguments as ``reference.record_pivotals_ref`` (the store's
    tensors contiguous, bool flags and pattern, float32 profiles, int64 source). The mean over rows
    sums in another order than the twin's, so a coverage within float32 rounding of ``tau_fb`` can
    land on the other side."""
    for t in store:
        if not t.is_contiguous():
            raise ValueError("record_pivotals: the store's tensors must be contiguous")
    _launch_record(block_mass, store, cluster, layer, pivotal, rank, count, own_vs_mask, v_blocks, s_blocks,
                   tau_fb, needs_sparser)


@on_input_device
def _launch_record(block_mass, store: PivotalStore, cluster, layer, pivotal, rank, count, own_vs_mask,
                   v_blocks, s_blocks, tau_fb: float, needs_sparser: bool) -> None:
    """``record_pivotals_kernel`` on ``block_mass``'s GPU (the store is not a tensor)."""
    b, h, nqb, nkb = block_mass.shape
    record_pivotals_kernel[(b * h,)](
        _u8(pivotal), cluster.contiguous(), layer, rank.contiguous(), count.contiguous(), _f32(block_mass),
        _u8(own_vs_mask), _f32(v_blocks), _f32(s_blocks), store.exists.view(torch.uint8),
        store.vs_enough.view(torch.uint8), store.pattern.view(torch.uint8), store.v, store.s, store.source,
        h, store.pattern.shape[1], nqb, nkb, float(tau_fb),
        NP=max(16, triton.next_power_of_2(nkb)), SPARSER=bool(needs_sparser))
