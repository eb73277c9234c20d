"""The methods inside a transformers model: registration, generate(), chunks, padding, trace."""
import pytest
import torch

import sharedattn.analysis.hf  # noqa: F401  (registers the attention functions)
from sharedattn.analysis.hf.capture import attention_implementation
from sharedattn.analysis.hf.prefill_run import logit_fidelity, run_prefill
from sharedattn.analysis.hf.sparse_attention import PrefillSession, prefill_session
from sharedattn.analysis.method.method_config import MethodName, make_config

IDS = list(range(300, 1000))


def cfg(method, **kw):
    return make_config(method, block_size=64, dense_below=0, min_budget=64, gamma=0.6, **kw)


@pytest.mark.parametrize("method", list(MethodName))
def test_attn_implementation_and_generate(tiny_model, method):
    model = tiny_model.model
    ids = torch.tensor([IDS[:400]])
    with attention_implementation(model, method.value), torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 404)


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
