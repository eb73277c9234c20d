"""The methods inside a transformers model: registration, generate(), chunks, padding, trace."""
import warnings
from types import SimpleNamespace

import pytest
import torch

import sharedattn.analysis.hf  # noqa: F401  (registers the attention functions)
from sharedattn.analysis.hf.capture import attention_implementation
from sharedattn.analysis.hf.prefill_run import logit_fidelity, run_prefill
from sharedattn.analysis.hf.sparse_attention import PrefillSession, prefill_session
from sharedattn.analysis.method.method_config import Decision, MethodName, make_config

IDS = list(range(300, 1000))


def cfg(method, **kw):
    return make_config(method, block_size=64, dense_below=0, min_budget=64, gamma=0.6, **kw)


# What each method's heads may decide on the sparse path (dense only for the dense method).
SPARSE_DECISIONS = {
    MethodName.DENSE: {Decision.DENSE},
    MethodName.A_SHAPE: {Decision.A_SHAPE},
    MethodName.VERTICAL_SLASH: {Decision.VERTICAL_SLASH},
    MethodName.FLEXPREFILL: {Decision.QUERY_AWARE, Decision.VERTICAL_SLASH},
    MethodName.SHAREPREFILL: {Decision.PIVOTAL, Decision.SHARED, Decision.QUERY_AWARE, Decision.VERTICAL_SLASH},
}
# Two clusters spanning both layers: the first head of each is pivotal in layer 0.
TWO_CLUSTERS = SimpleNamespace(shared_clusters=[SimpleNamespace(heads=((0, 0), (0, 1), (1, 0), (1, 1))),
                                                SimpleNamespace(heads=((0, 2), (1, 2), (1, 3)))])


def sparse_session(method: MethodName) -> PrefillSession:
    """Budgets small enough that 700 tokens give layouts that skip blocks; SharePrefill with a
    lookup, no query-aware heads and no pivotal fallback, so its heads pivot and share."""
    extra = {"tau_qa": 0.0, "tau_fb": 1.0} if method is MethodName.SHAREPREFILL else {}
    config = cfg(method.value, local_tokens=128, sink_tokens=64, **extra)
    return PrefillSession(method, config, 2, 4, TWO_CLUSTERS if method is MethodName.SHAREPREFILL else None)


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts calls of the block-sparse kernel (it still runs)."""
    from sharedattn import kernels

    calls = []
    real = kernels.sparse_attention
    monkeypatch.setattr(kernels, "sparse_attention", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    return calls


def decisions(trace) -> list[Decision]:
    return [Decision(int(d)) for d in trace.decision.flatten()]


@pytest.mark.parametrize("method", list(MethodName))
def test_attn_implementation_and_generate(tiny_model, method, kernel_calls):
    model = tiny_model.model
    session = sparse_session(method)
    ids = torch.tensor([IDS])
    with attention_implementation(model, method.value), prefill_session(session), torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, len(IDS) + 4)
    assert sorted(session.traces) == [0, 1]  # the prompt went through the method in both layers
    per_layer = [decisions(session.traces[layer]) for layer in (0, 1)]
    assert set(per_layer[0] + per_layer[1]) <= SPARSE_DECISIONS[method]
    if method is MethodName.DENSE:
        assert kernel_calls == []
        return
    assert len(kernel_calls) == 2  # the sparse kernel ran once per layer (decode steps are dense)
    assert all(float(session.traces[layer].density.mean()) < 1 for layer in (0, 1))  # blocks skipped
    if method is MethodName.SHAREPREFILL:
        assert per_layer[0].count(Decision.PIVOTAL) == 2  # one pivotal head per cluster
        assert per_layer[1].count(Decision.SHARED) >= 1  # layer 1 used a pivotal's pattern


def test_trace_and_fidelity_against_dense(tiny_model):
    dense = run_prefill(tiny_model, IDS, MethodName.DENSE, cfg("dense"))
    run = run_prefill(tiny_model, IDS, MethodName.FLEXPREFILL, cfg("flexprefill"), compare_dense=True,
                      measure_recall=True, keep_masks=True)
    assert run.trace.decision.shape == (1, 2, 1, 4)  # chunks, layers, batch, heads
    assert 0 < run.trace.overall_density() < 1
    assert 0 < run.trace.mean_recall() <= 1 + 1e-5
    assert len(run.layer_errors) == 2 and all(e < 1 for e in run.layer_errors)
    assert run.trace.masks[0].shape == (1, 4, 11, 11)
    fid = logit_fidelity(dense.logits, run.logits)
    assert fid.positions == 64 and 0 <= fid.top1_agreement <= 1 and fid.kl_mean >= 0
    same = logit_fidelity(dense.logits, dense.logits)
    assert same.kl_mean < 1e-6 and same.top1_agreement == 1.0


def test_prefill_emits_no_past_key_values_warning(tiny_model):
    """transformers 5.24 deprecates ``past_key_values=`` for ``cache=``: prefill passes whichever
    name the model takes, so neither the chunks nor the decoding warn."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_prefill(tiny_model, IDS[:300], MethodName.VERTICAL_SLASH, cfg("vertical-slash"), chunk=128,
                    max_new_tokens=2)
    assert [str(w.message) for w in caught if "past_key_values" in str(w.message)] == []


def test_chunked_prefill_matches_one_pass_dense(tiny_model):
    one = run_prefill(tiny_model, IDS, MethodName.DENSE, cfg("dense"), max_new_tokens=5)
    chunked = run_prefill(tiny_model, IDS, MethodName.DENSE, cfg("dense"), chunk=256, max_new_tokens=5)
    assert torch.allclose(one.logits, chunked.logits, atol=1e-4)
    assert one.generated == chunked.generated


def test_chunked_sparse_prefill_runs_every_chunk(tiny_model):
    full = make_config("vertical-slash", block_size=64, dense_below=0, gamma=1.0, min_budget=4096)
    one = run_prefill(tiny_model, IDS, MethodName.VERTICAL_SLASH, full, max_new_tokens=4)
    chunked = run_prefill(tiny_model, IDS, MethodName.VERTICAL_SLASH, full, chunk=256, max_new_tokens=4)
    assert chunked.trace.decision.shape[0] == 3  # three chunks, each traced
    assert bool((chunked.trace.decision == int(Decision.VERTICAL_SLASH)).all())  # each chunk: the method, not dense
    assert torch.allclose(one.logits, chunked.logits, atol=1e-4)  # full budgets: exact
    assert one.generated == chunked.generated


def test_padded_batch_equals_each_prompt_alone(tiny_model):
    model = tiny_model.model
    a, b = IDS[:600], IDS[100:500]
    pad = 0
    ids = torch.tensor([a, [pad] * (len(a) - len(b)) + b])
    mask = torch.tensor([[1] * len(a), [0] * (len(a) - len(b)) + [1] * len(b)])
    session = PrefillSession(MethodName.SHAREPREFILL, cfg("shareprefill"), 2, 4)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate() does for left padding
    with attention_implementation(model, "shareprefill"), prefill_session(session), torch.no_grad():
        both = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
        assert session.traces[0].decision.shape == (2, 4)
        alone = model(input_ids=torch.tensor([b])).logits[:, -1]
    assert torch.allclose(both[1], alone[0], atol=1e-4)


def test_model_without_attention_interface_is_named(tiny_model, monkeypatch):
    from sharedattn.analysis.hf import prefill_run

    monkeypatch.setattr(prefill_run, "prefill_session", _no_trace_session)
    with pytest.raises(prefill_run.AttentionInterfaceError, match="LlamaForCausalLM"):
        run_prefill(tiny_model, IDS[:200], MethodName.DENSE, cfg("dense"))


class _no_trace_session:
    """Stands in for a model whose layers never call the registered attention function."""

    def __init__(self, session):
        self.session = session

    def __enter__(self):
        return self.session

    def __exit__(self, *exc):
        return False
