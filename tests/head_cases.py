"""Shared by the CPU and GPU tests of kernels/heads.py: the one-launch head decisions against
their twin (reference.head_decisions_ref).

Masses are multiples of 2^-10 with small totals, so every running sum is exact in float32 and
budgets must match bit for bit; distance tests are compared where the twin's distance is not
within float32 rounding of its threshold (the kernel sums in another order)."""
import torch

from sharedattn.kernels.heads import head_decisions_triton
from sharedattn.kernels.reference import ShareState, head_decisions_ref, js_distance

CODES = (4, 3, 2, 1)  # vertical-slash, query-aware, shared, pivotal (analysis Decision codes)
ROUNDING = 1e-4


def _dyadic(shape, gen, zeros=0.3):
    x = torch.randint(0, 16, shape, generator=gen).float() / 1024
    return torch.where(torch.rand(shape, generator=gen) < zeros, 0.0, x)  # ties at zero


def _state(b, c, nkb, gen):
    return dict(exists=torch.rand(b, c, generator=gen) < 0.6, vs_enough=torch.rand(b, c, generator=gen) < 0.3,
                v=_dyadic((b, c, nkb), gen), s=_dyadic((b, c, nkb), gen),
                source=torch.randint(0, 20, (b, c, 2), generator=gen))


def _on(device, *items):
    """Tensors (also inside a dict or a ShareState) moved to ``device``."""
    def move(x):
        if isinstance(x, torch.Tensor):
            return x.to(device)
        if isinstance(x, ShareState):
            return ShareState(*(move(f) for f in x))
        return x
    if len(items) == 1 and isinstance(items[0], dict):
        return {k: move(v) for k, v in items[0].items()}
    return [move(x) for x in items]


def _away(got, want_dist, tau):
    """Where the twin's distance is clear of the threshold (the comparison is meaningful)."""
    return (want_dist - tau).abs() > ROUNDING


METHODS = ["vertical-slash", "flexprefill", "shareprefill", "share-last-row-fixed"]


def check_head_decisions(nkb: int, method: str, device: torch.device) -> None:
    """The kernel against the twin on ``device`` (the GPU suite runs it on CUDA)."""
    gen = torch.Generator().manual_seed(nkb * 7 + len(method))
    b, h = 2, 6
    vertical, slash = _dyadic((b, h, nkb), gen), _dyadic((b, h, nkb), gen)
    kw = dict(gamma=0.9, min_count=3, codes=CODES)
    if method != "vertical-slash":
        # half the heads get their own profile back (distance 0, not query-aware), half another
        other = _dyadic((b, h, nkb), gen)
        own = torch.tensor([True, True, True, True, False, False])[None, :, None] if method.startswith("share") \
            else torch.rand(b, h, 1, generator=gen) < 0.5
        kw["estimate"] = torch.where(own, vertical, other)
        kw["tau_qa"] = 0.1
    if method.startswith("share"):
        cluster = torch.tensor([0, 1, 0, -1, 1, 2])
        st = _state(b, 3, nkb, gen)
        st["exists"][0] = torch.tensor([True, False, True])  # head 0 can share, head 1 is pivotal
        st["vs_enough"][0, 0] = False
        # heads that share: profiles equal to their cluster's pivotal (distance 0)
        copy = torch.tensor([True, False, True, True, True, False])[None, :, None]
        idx = cluster.clamp(min=0)[None, :, None].expand(b, h, nkb)
        vertical = torch.where(copy, st["v"].gather(1, idx), vertical)
        slash = torch.where(copy, st["s"].gather(1, idx), slash)
        kw["share"] = ShareState(cluster, tau_s=0.2, **st)
        kw["last_row"] = "last-row" in method
    if "fixed" in method:
        kw.update(v_fixed=2, s_fixed=nkb + 3)
    got = head_decisions_triton(*_on(device, vertical, slash), **_on(device, kw))
    got = got._replace(**{k: v.cpu() for k, v in got._asdict().items() if v is not None})
    want = head_decisions_ref(vertical, slash, **kw)
    for name in ("v_rank", "s_rank", "v_count", "s_count", "lr_rank", "lr_count"):
        g, w = getattr(got, name), getattr(want, name)
        assert (g is None) == (w is None), name
        assert g is None or torch.equal(g, w), name
    ok = torch.ones(b, h, dtype=torch.bool)
    if "estimate" in kw:
        ok &= _away(None, js_distance(kw["estimate"], vertical), kw["tau_qa"])
    if "share" in kw:
        st = kw["share"]
        idx = st.cluster.clamp(min=0)[None, :, None].expand(b, h, nkb)
        for mine, theirs in ((vertical, st.v), (slash, st.s)):
            ok &= _away(None, js_distance(mine, theirs.gather(1, idx)), st.tau_s)
    for name in ("decision", "qa", "pivotal", "shared", "source", "cid"):
        g, w = getattr(got, name), getattr(want, name)
        sel = ok if g.dim() == 2 else ok[..., None].expand_as(g)
        assert torch.equal(g[sel], w[sel]), name
    if method.startswith("share"):
        assert got.shared.any() and got.pivotal.any() and (got.decision == CODES[0]).any()




def check_coverage_rows(nkb: int, device: torch.device) -> None:
    """``coverage_rows`` against its twin: every head, then only some (the others count 0)."""
    from sharedattn.kernels.heads import coverage_rows_triton
    from sharedattn.kernels.reference import coverage_rows_ref

    gen = torch.Generator().manual_seed(nkb)
    mass = _dyadic((2, 3, 4, nkb), gen)
    mass[0, 0, 0, :3] = torch.tensor([float("nan"), -1.0, float("inf")])[: min(3, nkb)]  # count as zero
    mass[1, 2, 3] = 0.0  # a row with no mass keeps nothing
    wanted = torch.tensor([[True, False, True], [False, True, True]])
    for want in (None, wanted):
        got_rank, got_count = coverage_rows_triton(mass.to(device), 0.9, None if want is None else want.to(device))
        rank, count = coverage_rows_ref(mass, 0.9, want)
        assert torch.equal(got_count.cpu(), count)
        rows = torch.ones(2, 3, dtype=torch.bool) if want is None else want
        assert torch.equal(got_rank.cpu()[rows], rank[rows])
    assert int(count[1, 2, 3]) == 0 and int(count[0, 1].sum()) == 0


def check_record_pivotals(nqb: int, nkb: int, needs_sparser: bool, device: torch.device) -> None:
    """``record_pivotals_kernel`` against its twin: two batch elements, pivotal heads of three
    clusters written into a store that already holds other values (slots of no pivotal keep them)."""
    from sharedattn.kernels.heads import record_pivotals_triton
    from sharedattn.kernels.reference import PivotalStore, coverage_rows_ref, record_pivotals_ref

    gen = torch.Generator().manual_seed(nqb * 31 + nkb)
    b, h, c = 2, 5, 3
    cluster = torch.tensor([0, 1, -1, 2, 0])
    pivotal = torch.tensor([[True, False, False, True, False], [False, True, False, False, True]])
    mass = _dyadic((b, h, nqb, nkb), gen)
    own = torch.rand(b, h, nqb, nkb, generator=gen) < 0.5
    own[1, 1] = True  # covers everything: enough at any tau_fb
    v, s = _dyadic((b, h, nkb), gen), _dyadic((b, h, nkb), gen)
    rank, count = coverage_rows_ref(mass, 0.9, pivotal)
    layer = torch.tensor(7)
    st = _state(b, c, nkb, gen)
    st["pattern"] = torch.rand(b, c, nqb, nkb, generator=gen) < 0.5
    st = {name: st[name] for name in PivotalStore._fields}
    tau_fb = float((mass * own.float()).sum(-1).mean(-1)[pivotal].median())  # half the pivotal heads enough
    want = PivotalStore(*(t.clone() for t in st.values()))
    record_pivotals_ref(want, cluster, layer, pivotal, rank, count, mass, own, v, s, tau_fb, needs_sparser)
    got = PivotalStore(*(t.to(device) for t in st.values()))
    record_pivotals_triton(got, *_on(device, cluster, layer, pivotal, rank, count, mass, own, v, s), tau_fb,
                           needs_sparser)
    for name, g, w in zip(PivotalStore._fields, got, want):
        assert torch.equal(g.cpu(), w), name
    assert want.source[1, 0].tolist() == [7, 4] and bool(want.exists[1, 0])
    assert want.source[0, 1].tolist() == st["source"][0, 1].tolist()  # no pivotal of cluster 1 in element 0
    enough = [bool(want.vs_enough[i, j]) for i, j in ((0, 0), (0, 2), (1, 1), (1, 0))]
    assert needs_sparser or (any(enough) and not all(enough))
