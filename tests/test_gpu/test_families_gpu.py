"""Every model family on a CUDA GPU in bf16: the same tiny random-init families as the CPU tests
(tests/family_cases.py), through every method with the Triton kernels. Head dims the Triton kernels
do not take (Phi-3's 96, Gemma3's 256) run the family's dense attention with the reason in the
trace, never a traceback. Skipped without CUDA (tests/conftest.py)."""
import pytest
import torch
from family_cases import FALLBACKS, FAMILIES, IDS, check_keep_all_equals_dense, sparse

from sharedattn.analysis.hf.models import load_model
from sharedattn.analysis.hf.prefill_run import run_prefill
from sharedattn.analysis.method.method_config import Decision, MethodName
from sharedattn.kernels.limits import HEAD_DIMS

_MODELS: dict = {}


def family(name):
    if name not in _MODELS:
        _MODELS[name] = load_model(random_init=name, device="cuda", dtype="bfloat16")
    return _MODELS[name]


@pytest.mark.parametrize("name", FAMILIES)
def test_keeping_every_block_equals_dense_bit_for_bit_on_cuda(name):
    check_keep_all_equals_dense(family(name))  # the synced path: such a layer runs dense SDPA


@pytest.mark.parametrize("name", FAMILIES)
def test_keeping_every_block_as_one_step_is_dense_within_bf16_rounding_on_cuda(name):
    check_keep_all_equals_dense(family(name), whole_layer=True)


@pytest.mark.parametrize("method", [m for m in MethodName if m is not MethodName.DENSE])
@pytest.mark.parametrize("name", FAMILIES)
def test_sparse_path_or_a_reason_on_cuda(name, method):
    loaded = family(name)
    fp = loaded.fingerprint
    config, lookup = sparse(method, fp.num_layers, fp.num_heads)
    run = run_prefill(loaded, IDS, method, config, lookup)
    assert torch.isfinite(run.logits).all()
    reasons = {row["layer"]: row["reason"] for row in run.trace.dense_layers()}
    if fp.head_dim not in HEAD_DIMS:  # every layer: the family's dense attention, said why
        assert set(reasons) == set(range(fp.num_layers))
        assert any(f"head dim {fp.head_dim}" in r for r in reasons.values()), reasons
    else:
        assert reasons == FALLBACKS.get(name, {})
    density = run.trace.per_layer_density()
    for layer in range(fp.num_layers):
        decided = {Decision(int(d)) for d in run.trace.decision[0, layer].flatten()}
        if layer in reasons:
            assert decided == {Decision.DENSE} and density[layer] == 1.0
        else:
            assert Decision.DENSE not in decided and density[layer] < 1.0
