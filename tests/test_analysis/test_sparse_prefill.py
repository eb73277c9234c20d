"""The per-layer sparse prefill: decisions, sharing, fallbacks, GQA, batch, chunked shapes."""
from types import SimpleNamespace

import pytest
import torch

from sharedattn.analysis.method.coverage import coverage_mask
from sharedattn.analysis.method.method_config import Decision, MethodName, make_config
from sharedattn.analysis.method.sharing import SharingState, cluster_table
from sharedattn.analysis.method.sparse_prefill import SparsePrefill
from sharedattn.kernels.reference import attention_ref, block_mass_ref


def qkv(b=1, h=4, hkv=2, nq=512, nk=512, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, nq, d, generator=g)
    k = torch.randn(b, hkv, nk, d, generator=g)
    k[:, :, :8] *= 4  # a sink-like structure so the pattern is not uniform
    return q, k, torch.randn(b, hkv, nk, d, generator=g)


def lookup_of(*clusters):
    return SimpleNamespace(shared_clusters=[SimpleNamespace(heads=tuple(c)) for c in clusters])


def runner(method, lookup=None, layers=2, heads=4, **cfg):
    cfg = {"block_size": 64, "dense_below": 0, "min_budget": 64, **cfg}
    sharing = SharingState(cluster_table(lookup, layers, heads)) if method == "shareprefill" else None
    return SparsePrefill(MethodName(method), make_config(method, **cfg), sharing)


def test_below_crossover_runs_dense():
    q, k, v = qkv()
    out, trace = runner("vertical-slash", dense_below=1024).attend(0, q, k, v, 0.2)
    assert torch.allclose(out, attention_ref(q, k, v, 0.2), atol=1e-5)
    assert bool((trace.decision == Decision.DENSE).all()) and bool((trace.density == 1).all())


def test_prompt_shorter_than_a_block_runs_dense():
    q, k, v = qkv(nq=40, nk=40)
    out, trace = runner("shareprefill").attend(0, q, k, v, 0.2)
    assert out.shape == q.shape and bool((trace.decision == Decision.DENSE).all())


@pytest.mark.parametrize("method", ["a-shape", "vertical-slash", "flexprefill", "shareprefill"])
def test_full_budgets_equal_dense(method, monkeypatch):
    """A layout that keeps every block runs dense SDPA (the sparse kernel is never called)."""
    def no_sparse(*args, **kwargs):
        raise AssertionError("sparse kernel called for a layout that keeps everything")

    monkeypatch.setattr("sharedattn.kernels.sparse_attention", no_sparse)
    q, k, v = qkv(nq=300, nk=300)
    out, trace = runner(method, gamma=1.0, min_budget=4096, local_tokens=4096, sink_tokens=4096
                        ).attend(0, q, k, v, 0.2)
    assert torch.allclose(out, attention_ref(q, k, v, 0.2), atol=1e-5)
    assert torch.allclose(trace.density, torch.ones_like(trace.density))
    # nothing skipped: the same SDPA call as the dense path, bit for bit, but traced as the method
    dense_out, _ = runner(method, dense_below=10**6).attend(0, q, k, v, 0.2)
    assert torch.equal(out, dense_out) and not bool((trace.decision == Decision.DENSE).any())


def test_sparse_is_sparse_and_traced():
    q, k, v = qkv(nq=1024, nk=1024)
    out, trace = runner("vertical-slash", gamma=0.5).attend(0, q, k, v, 0.2)
    assert out.shape == q.shape and torch.isfinite(out).all()
    assert bool((trace.density < 1).all()) and bool((trace.decision == Decision.VERTICAL_SLASH).all())
    assert bool(((trace.coverage > 0) & (trace.coverage <= 1 + 1e-5)).all())


def test_batch_gqa_and_chunked_queries_match_one_by_one():
    q, k, v = qkv(b=2, h=6, hkv=2, nq=256, nk=640)  # q_len < k_len: chunked prefill
    out, trace = runner("flexprefill", heads=6).attend(0, q, k, v, 0.2)
    for b in range(2):
        ob, tb = runner("flexprefill", heads=6).attend(0, q[b:b + 1], k[b:b + 1], v[b:b + 1], 0.2)
        assert torch.allclose(out[b:b + 1], ob, atol=1e-5)
        assert torch.equal(trace.decision[b:b + 1], tb.decision)


def test_sharing_pivotal_then_shared_in_a_later_layer():
    q, k, v = qkv(nq=1024, nk=1024)
    lookup = lookup_of([(0, 0), (0, 1), (1, 0), (1, 1)])  # heads 2, 3 are missing from the lookup
    run = runner("shareprefill", lookup, gamma=0.5, tau_fb=1.0, tau_qa=0.0)
    _, t0 = run.attend(0, q, k, v, 0.2)
    assert t0.decision[0].tolist() == [Decision.PIVOTAL, Decision.VERTICAL_SLASH,
                                       Decision.VERTICAL_SLASH, Decision.VERTICAL_SLASH]
    assert float(t0.density[0, 0]) == 1.0
    out, t1 = run.attend(1, q, k, v, 0.2)  # same inputs: identical profiles, so both share
    assert t1.decision[0].tolist()[:2] == [Decision.SHARED, Decision.SHARED]
    assert t1.source[0, 0].tolist() == [0, 0] and t1.source[0, 2].tolist() == [-1, -1]
    assert t1.decision[0].tolist()[2:] == [Decision.VERTICAL_SLASH] * 2
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("method", ["vertical-slash", "flexprefill", "shareprefill"])
def test_the_step_takes_probe_rows_means_and_k_and_its_plan_carries_the_probe(method, monkeypatch):
    """The recorded step's inputs are q's probe rows (a view of its last block), its block means
    for the methods that estimate from them, and k (and the cluster row), never all of q; its plan carries the probe's
    pooled profiles, the number of pivotal heads, which reaches the kernel as num_mass_heads, and
    the kept share of the causal blocks, which reaches it as kept_share."""
    from sharedattn import kernels
    from sharedattn.analysis.method.patterns import pooled_profiles

    calls = []
    real_kernel = kernels.sparse_attention
    monkeypatch.setattr("sharedattn.kernels.sparse_attention",
                        lambda *a, **kw: calls.append(kw) or real_kernel(*a, **kw))
    q, k, v = qkv(nq=1024, nk=1024)
    run = runner(method, lookup_of([(0, 0), (0, 1), (1, 0), (1, 1)]), gamma=0.5, tau_fb=1.0, tau_qa=0.0)
    steps = []
    real_run = run.graphs.run
    run.graphs.run = lambda key, fn, inputs, **kw: steps.append((inputs, real_run(key, fn, inputs, **kw))) \
        or steps[-1][1]
    _, trace = run.attend(0, q, k, v, 0.2)
    inputs, plan = steps[0]
    want = {"q_probe", "k"} | ({"q_means"} if method in ("flexprefill", "shareprefill") else set())
    assert set(inputs) == want | ({"cluster"} if method == "shareprefill" else set())
    assert inputs["q_probe"].data_ptr() == q[:, :, -64:].data_ptr() and inputs["q_probe"].shape[2] == 64
    if "q_means" in inputs:
        assert torch.equal(inputs["q_means"], kernels.pool_blocks_mean(q, 64))
    vertical, slash = pooled_profiles(*kernels.last_block_profiles(q, k, 64, 0.2), 64)
    assert torch.equal(plan.vertical, vertical) and torch.equal(plan.slash, slash)
    pivotal = int((trace.decision == Decision.PIVOTAL).sum())
    assert plan.host_flags.tolist()[2] == pivotal == (1 if method == "shareprefill" else 0)
    assert calls[0]["num_mass_heads"] == (pivotal or None) and calls[0]["return_block_mass"] is (pivotal > 0)
    kept, causal = plan.host_flags.tolist()[3:]  # the kept share reaches auto's rule from the same host read
    assert kept == int(plan.counts.sum()) and causal == 16 * 17 // 2 * q.shape[0] * q.shape[1]
    assert calls[0]["kept_share"] == kept / causal and 0 < kept < causal
    if pivotal:
        assert torch.equal(calls[0]["mass_heads"], plan.pivotal)
        assert torch.equal(run.sharing.v[0, 0], vertical[0, 0]) and torch.equal(run.sharing.s[0, 0], slash[0, 0])


def test_no_sharing_when_profiles_differ_or_vertical_slash_suffices():
    q, k, v = qkv(nq=1024, nk=1024)
    lookup = lookup_of([(0, 0), (1, 0)])
    run = runner("shareprefill", lookup, gamma=0.5, tau_fb=1.0, tau_qa=0.0, tau_s=0.0)
    run.attend(0, q, k, v, 0.2)
    assert run.attend(1, q, k, v, 0.2)[1].decision[0, 0] == Decision.VERTICAL_SLASH  # tau_s = 0
    run = runner("shareprefill", lookup, gamma=0.5, tau_fb=0.01, tau_qa=0.0)
    run.attend(0, q, k, v, 0.2)
    assert run.attend(1, q, k, v, 0.2)[1].decision[0, 0] == Decision.VERTICAL_SLASH  # VS covers it


def test_state_resets_each_forward():
    q, k, v = qkv(nq=1024, nk=1024)
    run = runner("shareprefill", lookup_of([(0, 0), (1, 0)]), gamma=0.5, tau_fb=1.0, tau_qa=0.0)
    for _ in range(2):  # a second forward pass starts with no pivotal again
        assert run.attend(0, q, k, v, 0.2)[1].decision[0, 0] == Decision.PIVOTAL


def test_continue_after_times_one_sharing_layer_again():
    """A layer number at or below the last one starts a new pass (layer 1 then finds no pivotal
    and becomes one); ``continue_after`` keeps the pass, as the layer benchmark's repeats need."""
    q, k, v = qkv(nq=1024, nk=1024)
    run = runner("shareprefill", lookup_of([(0, 0), (1, 0)]), gamma=0.5, tau_fb=1.0, tau_qa=0.0)
    run.attend(0, q, k, v, 0.2)
    assert run.attend(1, q, k, v, 0.2)[1].decision[0, 0] == Decision.SHARED
    for _ in range(2):
        run.continue_after(0)
        assert run.attend(1, q, k, v, 0.2)[1].decision[0, 0] == Decision.SHARED
    assert run.attend(1, q, k, v, 0.2)[1].decision[0, 0] == Decision.PIVOTAL  # a new pass


@pytest.mark.parametrize("skip", [False, True], ids=["map-every-layer", "skip-map-unclustered"])
@pytest.mark.parametrize("in_graph", [False, True], ids=["attention-eager", "attention-in-graph"])
@pytest.mark.parametrize("method", ["a-shape", "vertical-slash", "flexprefill", "shareprefill"])
def test_whole_layer_step_matches_the_synced_path(method, in_graph, skip, monkeypatch):
    """The layer without a host sync (what CUDA records as a graph: full-width layout, the two-pass
    map of the pivotal heads always asked for where a layer has a head in a shared cluster, their
    record), with the attention launched after the graph or inside it (``ATTENTION_IN_GRAPH_BELOW``),
    gives the synced path's outputs and traces, layer after layer; the dispatcher counts one call per
    layer. SharePrefill's layer 2 has no head in a shared cluster: with ``SKIP_MAP_UNCLUSTERED`` it
    asks for no map (and records nothing) and still matches. On CPU the step is taken by making the
    layer eligible (on CUDA: the Triton backend)."""
    from sharedattn import kernels
    from sharedattn.analysis.method import sparse_prefill

    monkeypatch.setattr(sparse_prefill, "ATTENTION_IN_GRAPH_BELOW", {MethodName(method): 1 << 20} if in_graph else {})
    monkeypatch.setattr(sparse_prefill, "SKIP_MAP_UNCLUSTERED", skip)
    steps = []

    q, k, v = qkv(nq=1024, nk=1024)
    lookup = lookup_of([(0, 0), (0, 1), (1, 0), (1, 1)])
    cfg = dict(gamma=0.5, tau_fb=1.0, tau_qa=0.0)
    synced, whole = runner(method, lookup, layers=3, **cfg), runner(method, lookup, layers=3, **cfg)
    monkeypatch.setattr(SparsePrefill, "_whole_layer_backend",
                        lambda self, q, nk: kernels.Backend.REFERENCE if self is whole else None)
    for name in ("_layer_step", "_plan_step"):
        real_step = getattr(SparsePrefill, name)
        monkeypatch.setattr(SparsePrefill, name, lambda self, *a, _f=real_step, _n=name, **kw: steps.append(_n)
                            or _f(self, *a, **kw))
    calls = []
    real_kernel = kernels.sparse_attention
    monkeypatch.setattr("sharedattn.kernels.sparse_attention",
                        lambda *a, **kw: calls.append(dict(kw, layout=a[3])) or real_kernel(*a, **kw))
    for layer in (0, 1, 2):
        want, want_trace = synced.attend(layer, q, k, v, 0.2)
        calls.clear()
        with kernels.record_backends() as ran:
            got, trace = whole.attend(layer, q, k, v, 0.2)
        assert torch.equal(got, want) and dict(ran) == {"reference": 1}
        assert steps[-2:] == ["_layer_step", "_plan_step"] if in_graph else steps[-1:] == ["_plan_step"]
        for field in ("decision", "density", "coverage", "source"):
            assert torch.equal(getattr(trace, field), getattr(want_trace, field)), field
        assert calls[0]["layout"].indices.shape[-1] == 1024 // 64  # full width: no widest row read
        if method == "shareprefill" and (layer < 2 or not skip):
            assert calls[0]["mass_pass"] == "two" and calls[0]["return_block_mass"]
            assert torch.equal(calls[0]["mass_heads"], trace.decision == Decision.PIVOTAL)
        elif method == "shareprefill":  # no clustered head in layer 2: no map, nothing to record
            assert not calls[0].get("return_block_mass") and "mass_heads" not in calls[0]
            assert not (trace.decision == Decision.PIVOTAL).any() and not (trace.decision == Decision.SHARED).any()
        if method == "shareprefill" and layer == 1:
            assert trace.decision[0, :2].tolist() == [Decision.SHARED, Decision.SHARED]
    if method == "shareprefill":
        for name in ("exists", "pattern", "v", "s", "source", "vs_enough"):
            assert torch.equal(getattr(whole.sharing, name), getattr(synced.sharing, name)), name


def test_config_validation():
    with pytest.raises(ValueError, match="tau_s"):
        make_config("shareprefill", tau_s=1.5)
    with pytest.raises(ValueError, match="gamma"):
        make_config("flexprefill", gamma=0.0)
    with pytest.raises(ValueError, match="block_size"):
        make_config("dense", block_size=48)
    with pytest.raises(ValueError, match="exact_tail"):
        make_config("vertical-slash", exact_tail=-1)


@pytest.mark.parametrize("method", ["vertical-slash", "flexprefill", "shareprefill"])
def test_exact_tail_rows_equal_dense_and_the_rest_is_unchanged(method):
    q, k, v = qkv(nq=700, nk=1000)  # chunked, ragged: the last query block holds 700 - 640 = 60 rows
    lookup = lookup_of([(0, 0), (0, 1), (1, 0), (1, 1)])
    plain, t0 = runner(method, lookup, gamma=0.5, exact_tail=0).attend(0, q, k, v, 0.2)
    tail, t1 = runner(method, lookup, gamma=0.5, exact_tail=61).attend(0, q, k, v, 0.2)
    dense = attention_ref(q, k, v, 0.2)
    # the last 61 queries reach into the second-last block: rows 576.. are exact, the rest unchanged
    assert torch.allclose(tail[:, :, 576:], dense[:, :, 576:], atol=1e-5)
    assert not torch.allclose(plain[:, :, 576:], dense[:, :, 576:], atol=1e-3)
    assert torch.allclose(tail[:, :, :576], plain[:, :, :576], atol=1e-6)
    grew = (t1.density > t0.density) | (t0.density == 1)  # a pivotal head was dense already
    assert bool(grew.all()) and bool((t1.coverage > 1 - 1e-5).all())


def test_pivotal_at_full_density_runs_dense_and_still_records_its_map(monkeypatch):
    """Short prompt, every block kept: the pivotal layer is dense SDPA, and the pivotal's pattern
    is still recorded from its exact map (sharing itself then falls back: its own vertical-slash
    mask covers everything)."""
    def no_sparse(*args, **kwargs):
        raise AssertionError("sparse kernel called for a layout that keeps everything")

    monkeypatch.setattr("sharedattn.kernels.sparse_attention", no_sparse)
    q, k, v = qkv(nq=300, nk=300)
    run = runner("shareprefill", lookup_of([(0, 0), (1, 0)]), min_budget=4096, tau_fb=1.0, tau_qa=0.0)
    out, t0 = run.attend(0, q, k, v, 0.2)
    assert t0.decision[0, 0] == Decision.PIVOTAL
    assert torch.equal(out, runner("shareprefill", dense_below=10**6).attend(0, q, k, v, 0.2)[0])
    exact = block_mass_ref(q, k, 64, 0.2)[0, 0]
    assert torch.equal(run.sharing.pattern[0, 0], coverage_mask(exact, 0.95))
    assert run.attend(1, q, k, v, 0.2)[1].decision[0, 0] == Decision.VERTICAL_SLASH


def _shared_layer(own_last_row: bool):
    """Pivotal in layer 0; in layer 1 head 0's last query block also attends to three key spikes."""
    q, k, v = qkv(nq=1024, nk=1024)
    run = runner("shareprefill", lookup_of([(0, 0), (1, 0)]), gamma=0.7, tau_fb=1.0, tau_qa=0.0, tau_s=1.0,
                 own_last_row=own_last_row)
    run.keep_masks = True
    run.attend(0, q, k, v, 0.2)
    u = 0.6 * torch.randn(q.shape[-1], generator=torch.Generator().manual_seed(5))
    q1, k1 = q.clone(), k.clone()
    for start in (330, 460, 720):
        k1[:, 0, start:start + 4] += u
    q1[:, 0, -64:] += u
    return run.attend(1, q1, k1, v, 0.2)[1]


def test_shared_head_keeps_what_its_own_last_row_needs():
    paper, ours = _shared_layer(False), _shared_layer(True)
    assert paper.decision[0, 0] == ours.decision[0, 0] == Decision.SHARED
    assert torch.equal(paper.mask[0, 0, :-1], ours.mask[0, 0, :-1])  # only the last row changes
    last_paper, last_ours = paper.mask[0, 0, -1], ours.mask[0, 0, -1]
    assert (last_ours >= last_paper).all() and last_ours.sum() > last_paper.sum()
    assert float(ours.coverage[0, 0]) >= 0.7 and float(ours.coverage[0, 0]) > float(paper.coverage[0, 0])


@pytest.mark.parametrize("own_blocks,needs_sparser,falls_back", [
    ("causal", False, True),  # the paper: vertical-slash covers tau_fb, so the cluster falls back
    ("causal", True, False),  # ours: but it keeps more blocks than the pivotal's pattern: share
    ("diagonal", True, True),  # ours: it covers and is no denser: fall back
])
def test_fallback_rule(own_blocks, needs_sparser, falls_back):
    state = SharingState(torch.zeros(1, 2, dtype=torch.long))  # one cluster: both heads of layer 0
    state.reset(1, 4, 4, "cpu")
    mass = torch.eye(4).expand(1, 2, 4, 4).contiguous()  # each row's mass sits on the diagonal block
    causal = torch.ones(4, 4, dtype=torch.bool).tril()
    own = (causal if own_blocks == "causal" else torch.eye(4, dtype=torch.bool)).expand(1, 2, 4, 4)
    prof = torch.full((1, 2, 4), 0.25)
    pivotal = torch.tensor([[True, False]])
    state.record_pivotals(state.cluster_row(0, "cpu"), state.layer_index(0, "cpu"), pivotal, mass, own, prof, prof,
                          0.9, 0.95, fallback_needs_sparser=needs_sparser)
    assert bool(state.vs_enough[0, 0]) is falls_back
    assert int(state.pattern[0, 0].sum()) == 4  # the pivotal's pattern: the diagonal


def test_fallback_rule_is_a_checked_choice():
    from sharedattn.analysis.method.method_config import ConfigError, FallbackRule

    assert make_config("shareprefill", fallback="covers-and-sparser").fallback is FallbackRule.COVERS_AND_SPARSER
    with pytest.raises(ConfigError, match="fallback must be one of covers, covers-and-sparser"):
        make_config("shareprefill", fallback="never")
