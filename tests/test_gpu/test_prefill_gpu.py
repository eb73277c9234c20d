"""Sparse prefill on a CUDA GPU in bf16: Triton backend vs the torch reference backend, planted
inputs, and every method inside a random-init model (chunked, unchunked, generate).

Skipped without CUDA (tests/conftest.py marks everything under tests/test_gpu ``gpu``).
"""
import pytest
import torch

from sharedattn import kernels
from sharedattn.analysis.evaluation.planted import PlantedSpec, Style, planted_cluster_table, planted_layer
from sharedattn.analysis.method.method_config import Decision, MethodName, make_config
from sharedattn.analysis.method.sharing import SharingState
from sharedattn.analysis.method.sparse_prefill import SparsePrefill

DEV = torch.device(torch.cuda.current_device()) if torch.cuda.is_available() else None
SPEC = PlantedSpec(heads=8, kv_heads=2, layout=((Style.LOCAL,) * 2 + (Style.VERTICAL,) * 2,
                                                  (Style.SLASH,) * 2 + (Style.RETRIEVAL,) * 2))
N = 4096
SPARSE = [MethodName.A_SHAPE, MethodName.VERTICAL_SLASH, MethodName.FLEXPREFILL, MethodName.SHAREPREFILL]


def _runner(method, table=None, use_graphs=True, whole_layer=True, **kw):
    cfg = make_config(method, dense_below=0, **kw)
    table = planted_cluster_table(SPEC, 2) if table is None else table
    sharing = SharingState(table) if method is MethodName.SHAREPREFILL else None
    return SparsePrefill(method, cfg, sharing, measure_recall=True, keep_masks=True, use_graphs=use_graphs,
                         whole_layer=whole_layer)


def _two_layers(runner, layers):
    outs = []
    for layer, (q, k, v) in enumerate(layers):
        out, trace = runner.attend(layer, q, k, v, q.shape[-1] ** -0.5)
        outs.append((out, trace))
    return outs


@pytest.fixture(scope="module")
def layers():
    return [planted_layer(SPEC, N, layer, DEV) for layer in (0, 1)]


@pytest.mark.parametrize("method", SPARSE)
def test_triton_matches_reference_backend(layers, method):
    with kernels.use_backend("triton"):
        got = _two_layers(_runner(method), layers)
    with kernels.use_backend("reference"):
        want = _two_layers(_runner(method), layers)
    for (o, t), (ro, rt) in zip(got, want):
        assert o.dtype == torch.bfloat16 and torch.isfinite(o).all()  # every element written
        assert torch.equal(t.decision, rt.decision)
        assert (t.mask == rt.mask).float().mean() > 0.995  # near-ties in top-k may flip a block
        err = (o.float() - ro.float()).norm() / ro.float().norm()
        assert err < 1e-2, float(err)
        assert torch.allclose(t.density, rt.density)
        assert torch.allclose(t.recall, rt.recall, atol=2e-3)


def test_shareprefill_shares_planted_groups(layers):
    runner = _runner(MethodName.SHAREPREFILL)
    (_, t0), (_, t1) = _two_layers(runner, layers)
    assert bool((t0.decision == int(Decision.PIVOTAL)).any())
    assert not bool((t1.decision == int(Decision.PIVOTAL)).any())
    assert float(t1.recall.mean()) > 0.9


def test_planted_output_is_close_to_dense(layers):
    q, k, v = layers[1]
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    out, trace = _runner(MethodName.FLEXPREFILL).attend(1, q, k, v, q.shape[-1] ** -0.5)
    err = (out.float() - dense.float()).norm() / dense.float().norm()
    assert err < 0.15 and float(trace.density.mean()) < 0.8  # 0.101 measured on the H200


def _three_layer_passes(layers, method, use_graphs, whole_layer, unclustered_last=False):
    """Forward passes over three planted layers (layer 2's clusters are new, so it can have pivotal
    heads of its own; with ``unclustered_last`` it has no clustered head at all): the same length
    twice, another geometry, the first again. Per pass the layers' (out, trace) and the sharing state
    after it; and the runner."""
    three = [*layers, planted_layer(SPEC, N, 2, DEV)]
    table = planted_cluster_table(SPEC, 3)
    table[2] = -1 if unclustered_last else torch.where(table[2] >= 0, table[2] + int(table.max()) + 1, -1)
    short = [tuple(t[:, :, -2048:].contiguous() for t in layer) for layer in three]
    runner = _runner(method, table, use_graphs=use_graphs, whole_layer=whole_layer)
    passes = []
    for inputs in (three, three, short, three):
        passes.append(_two_layers(runner, inputs))
        state = runner.sharing
        passes[-1].append(None if state is None else
                          [t.clone() for t in (state.pattern, state.v, state.s, state.vs_enough, state.exists,
                                               state.source)])
    return passes, runner


def _same_passes(got_passes, want_passes, exact_out=True):
    for got, want in zip(got_passes, want_passes):
        for (o, t), (ro, rt) in zip(got[:-1], want[:-1]):
            assert torch.equal(o, ro) if exact_out else _bf16_close(o, ro)
            for name in ("decision", "density", "coverage", "source", "recall", "mask"):
                assert torch.equal(getattr(t, name), getattr(rt, name)), name
        if want[-1] is not None:
            assert all(torch.equal(a, b) for a, b in zip(got[-1], want[-1]))  # the sharing state


def _bf16_close(a, b):
    return torch.allclose(a.float(), b.float(), rtol=1.6e-2, atol=1e-2)


@pytest.mark.parametrize("whole_layer,in_graph", [(False, False), (True, False), (True, True)],
                         ids=["synced", "whole-layer", "whole-layer-attention-in-graph"])
@pytest.mark.parametrize("method", SPARSE)
def test_graphs_replay_what_eager_runs(layers, method, whole_layer, in_graph, monkeypatch):
    """The recorded steps give the eager steps' outputs, traces and sharing state, bit for bit:
    ``synced``, the decision step and SharePrefill's pivotal record as two graphs around the host
    sync; ``whole-layer``, the decision step and layout as one graph, the attention launched after it
    and SharePrefill's record as a second graph; ``...-attention-in-graph``, the whole layer (decision
    step, attention, pivotal record) as one graph (``ATTENTION_IN_GRAPH_BELOW``)."""
    from sharedattn.analysis.method import sparse_prefill

    monkeypatch.setattr(sparse_prefill, "ATTENTION_IN_GRAPH_BELOW", {method: 1 << 20} if in_graph else {})
    runs = {graphs: _three_layer_passes(layers, method, graphs, whole_layer) for graphs in (True, False)}
    _same_passes(runs[True][0], runs[False][0])
    graphed, eager = runs[True][1], runs[False][1]
    assert eager.graph_counts() == (0, 0) and eager.record_graphs.captures == 0
    assert graphed.graph_counts()[0] >= 2 and graphed.graph_counts()[1] >= 2  # once per geometry, replayed
    if whole_layer:
        assert graphed.graphs.captures == 0
        records = graphed.record_graphs.captures
        # the record in its own graph (once per geometry) unless inside the layer's
        assert (records >= 1) if method is MethodName.SHAREPREFILL and not in_graph else records == 0, records
        return
    if method is MethodName.SHAREPREFILL:
        first_pass = [t.decision for _, t in runs[True][0][0][:-1]]
        assert bool((first_pass[0] == int(Decision.PIVOTAL)).any())
        # recorded at the first pivotal layer of a geometry, replayed by later ones (layer 2) and by
        # the second pass of the same length (same state storage)
        assert graphed.record_graphs.captures >= 1 and graphed.record_graphs.replays >= 1
    else:
        assert graphed.record_graphs.captures == 0


@pytest.mark.parametrize("in_graph", [False, True], ids=["attention-eager", "attention-in-graph"])
@pytest.mark.parametrize("method", SPARSE)
def test_whole_layer_matches_the_synced_layer(layers, method, in_graph, monkeypatch):
    """The whole layer (its attention after its graph or inside it) against the synced path (both
    recorded): the same decisions,
    masks, traces and sharing state, and the same outputs bit for bit. Where they could part: the
    whole layer always maps the pivotal heads in two passes (the synced path takes one pass on head
    dim 128) and never takes the keeps-every-block SDPA shortcut; neither happens on these layers
    (checked: no layer keeps every block), and a pivotal map that rounds differently would show in
    the sharing state."""
    from sharedattn.analysis.method import sparse_prefill

    monkeypatch.setattr(sparse_prefill, "ATTENTION_IN_GRAPH_BELOW", {method: 1 << 20} if in_graph else {})
    whole, _ = _three_layer_passes(layers, method, True, True)
    synced, _ = _three_layer_passes(layers, method, True, False)
    assert all(float(t.density.min()) < 1 for p in synced for _, t in p[:-1])
    _same_passes(whole, synced)


@pytest.mark.parametrize("in_graph", [False, True], ids=["attention-eager", "attention-in-graph"])
def test_whole_layer_skips_the_map_of_an_unclustered_layer(layers, in_graph, monkeypatch):
    """``SKIP_MAP_UNCLUSTERED``: a SharePrefill layer with no head in a shared cluster runs no map and no
    record on the whole-layer paths, and still matches the synced path bit for bit (outputs, traces,
    sharing state); the map is asked for in the two clustered layers only."""
    from sharedattn.analysis.method import sparse_prefill

    method = MethodName.SHAREPREFILL
    monkeypatch.setattr(sparse_prefill, "ATTENTION_IN_GRAPH_BELOW", {method: 1 << 20} if in_graph else {})
    monkeypatch.setattr(sparse_prefill, "SKIP_MAP_UNCLUSTERED", True)
    mapped = []
    real = kernels.sparse_attention
    monkeypatch.setattr(kernels, "sparse_attention",
                        lambda *a, **kw: mapped.append(bool(kw.get("return_block_mass"))) or real(*a, **kw))
    whole, _ = _three_layer_passes(layers, method, True, True, unclustered_last=True)
    assert True in mapped and False in mapped  # in the graph: each new graph's eager call and its capture
    if not in_graph:  # one call per layer: layers 0 and 1 mapped, layer 2 not
        assert mapped[:3] == [True, True, False]
    monkeypatch.setattr(kernels, "sparse_attention", real)
    synced, _ = _three_layer_passes(layers, method, True, False, unclustered_last=True)
    _same_passes(whole, synced)


@pytest.fixture(scope="module")
def tiny_cuda():
    from sharedattn.analysis.hf.models import load_model

    return load_model(random_init="llama-tiny", device="cuda", dtype="bfloat16")


@pytest.mark.parametrize("method", list(MethodName))
@pytest.mark.parametrize("chunk", [None, 512])
def test_run_prefill_every_method_on_cuda(tiny_cuda, method, chunk):
    from sharedattn.analysis.hf.prefill_run import run_prefill

    ids = list(range(300, 1500))
    cfg = make_config(method, block_size=64, dense_below=0, min_budget=128, gamma=0.9)
    run = run_prefill(tiny_cuda, ids, method, cfg, compare_dense=True, measure_recall=True,
                      chunk=chunk, max_new_tokens=4)
    assert torch.isfinite(run.logits).all()
    assert len(run.generated) >= 1
    assert run.trace.decision.shape[0] == (1 if chunk is None else 3)
    assert all(e < 0.5 for e in run.layer_errors)
    chunks, layers = (1 if chunk is None else 3), tiny_cuda.fingerprint.num_layers
    if method is not MethodName.DENSE:  # one recording per chunk's geometry, replayed by the other layers
        assert run.decision_graphs == {"recorded": chunks, "replayed": chunks * (layers - 1)}
        assert not bool((run.trace.decision == int(Decision.DENSE)).any())  # the sparse path, every chunk


def test_generate_on_cuda(tiny_cuda, monkeypatch):
    """generate() with SharePrefill in a session (dense_below=0, a lookup of two clusters): the
    prompt runs the sparse kernel in both layers, layer 0 has pivotal heads and layer 1 shares."""
    from types import SimpleNamespace

    import sharedattn.analysis.hf  # noqa: F401  (registers the attention functions)
    from sharedattn.analysis.hf.capture import attention_implementation
    from sharedattn.analysis.hf.sparse_attention import PrefillSession, prefill_session
    from sharedattn.analysis.method.method_config import Decision

    calls = []
    real = kernels.sparse_attention
    monkeypatch.setattr(kernels, "sparse_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    lookup = SimpleNamespace(shared_clusters=[SimpleNamespace(heads=((0, 0), (0, 1), (1, 0), (1, 1))),
                                              SimpleNamespace(heads=((0, 2), (1, 2), (1, 3)))])
    cfg = make_config("shareprefill", block_size=64, dense_below=0, min_budget=64, gamma=0.6,
                      tau_qa=0.0, tau_fb=1.0)
    session = PrefillSession(MethodName.SHAREPREFILL, cfg, 2, 4, lookup)
    ids = torch.tensor([list(range(300, 1500))], device="cuda")  # 1200 tokens: layer 1 shares (bf16, CPU twin)
    with attention_implementation(tiny_cuda.model, "shareprefill"), prefill_session(session), torch.no_grad():
        out = tiny_cuda.model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 1205)
    first, second = ([Decision(int(d)) for d in session.traces[layer].decision.flatten()] for layer in (0, 1))
    assert Decision.DENSE not in first + second
    assert first.count(Decision.PIVOTAL) == 2 and second.count(Decision.SHARED) >= 1
    assert 1 <= len(calls) <= 2  # the block-sparse kernel ran (at most once per layer; decoding is dense)
