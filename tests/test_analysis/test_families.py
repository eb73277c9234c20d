"""Every model family through capture and the five methods: tiny random-init models of Llama, Qwen2,
Qwen3, Mistral, Gemma2, Gemma3 (text) and Phi-3 (analysis/hf/models.py RANDOM_SHAPES), each
compared against the family's own eager attention."""
import pytest
import torch
from family_cases import FALLBACKS, FAMILIES, IDS, check_keep_all_equals_dense, sparse

from sharedattn import kernels
from sharedattn.analysis.files.prompts import Prompt
from sharedattn.analysis.hf.capture import CaptureConfig, attention_implementation, capture_prompt
from sharedattn.analysis.hf.models import RANDOM_SHAPES, load_model
from sharedattn.analysis.hf.prefill_run import run_prefill
from sharedattn.analysis.method.method_config import Decision, MethodName, make_config
from sharedattn.kernels.reference import block_mass_from_probs, causal_token_mask
from sharedattn_cli.prefill_report import dense_layers_line

_MODELS: dict = {}


def family(name):
    if name not in _MODELS:
        _MODELS[name] = load_model(random_init=name, device="cpu")
    return _MODELS[name]


def test_every_family_has_a_tiny_shape():
    assert {RANDOM_SHAPES[name].family for name in FAMILIES} == {
        "llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3"}
    assert RANDOM_SHAPES["llama-tiny"].family == "llama" and RANDOM_SHAPES["llama-tiny"].extra == ()


@pytest.mark.parametrize("name", FAMILIES)
def test_capture_equals_eager(name):
    loaded = family(name)
    ids = tuple(IDS[:320])
    record, logits = capture_prompt(loaded, Prompt("p", "x", ids), CaptureConfig(block_size=64, chunk_size=64))
    with attention_implementation(loaded.model, "eager"), torch.no_grad():
        out = loaded.model(input_ids=torch.tensor([ids]), output_attentions=True)
    assert torch.allclose(logits, out.logits[0, -1], atol=1e-5)
    expected = torch.stack([block_mass_from_probs(a[0].float(), 64) for a in out.attentions])
    assert torch.allclose(record.block_mass, expected, atol=1e-6)
    assert torch.allclose(record.block_mass.sum(-1), torch.ones(expected.shape[:3]), atol=1e-5)
    probe = torch.stack([a[0, :, -64:].float().mean(1) for a in out.attentions])
    assert torch.allclose(record.vertical, probe, atol=1e-6)


@pytest.mark.parametrize("name", FAMILIES)
def test_layouts_keeping_every_block_equal_dense_bit_for_bit(name):
    check_keep_all_equals_dense(family(name))


def _record_attention(loaded, calls):
    """Hooks keeping each attention module call's inputs and output, by layer."""
    def hook(module, args, kwargs, output):
        calls[module.layer_idx] = (args, dict(kwargs), output[0])
    return [layer.self_attn.register_forward_hook(hook, with_kwargs=True) for layer in loaded.model.model.layers]


def _eager_output(loaded, module, args, kwargs):
    """The layer's output under the family's own eager attention, on the same inputs."""
    mask = kwargs.get("attention_mask")
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    n = hidden.shape[1]
    if mask is None:
        mask = causal_token_mask(n, n, hidden.device)[None, None]
    if mask.dtype == torch.bool:
        mask = torch.where(mask, 0.0, torch.finfo(hidden.dtype).min)
    with attention_implementation(loaded.model, "eager"), torch.no_grad():
        return module(*args, **{**kwargs, "attention_mask": mask})[0]


@pytest.mark.parametrize("method", [m for m in MethodName if m is not MethodName.DENSE])
@pytest.mark.parametrize("name", FAMILIES)
def test_sparse_path_runs_and_fallbacks_say_why(name, method, monkeypatch):
    loaded = family(name)
    fp = loaded.fingerprint
    calls = []
    real = kernels.sparse_attention
    monkeypatch.setattr(kernels, "sparse_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    config, lookup = sparse(method, fp.num_layers, fp.num_heads)
    outputs: dict = {}
    hooks = _record_attention(loaded, outputs)
    try:
        run = run_prefill(loaded, IDS, method, config, lookup)
    finally:
        for h in hooks:
            h.remove()
    fallbacks = FALLBACKS.get(name, {})
    assert {row["layer"]: row["reason"] for row in run.trace.dense_layers()} == fallbacks
    density = run.trace.per_layer_density()
    sparse_layers = [layer for layer in range(fp.num_layers) if layer not in fallbacks]
    assert len(calls) == len(sparse_layers)  # the block-sparse kernel ran once per sparse layer
    for layer in range(fp.num_layers):
        decided = {Decision(int(d)) for d in run.trace.decision[0, layer].flatten()}
        if layer in fallbacks:
            assert decided == {Decision.DENSE} and density[layer] == 1.0
            args, kwargs, out = outputs[layer]
            reference = _eager_output(loaded, loaded.model.model.layers[layer].self_attn, args, kwargs)
            assert torch.allclose(out, reference, atol=1e-5)
        else:
            assert Decision.DENSE not in decided and density[layer] < 1.0


@pytest.mark.parametrize("name", ["phi3-tiny", "gemma3-tiny"])
def test_head_dims_the_triton_kernels_do_not_take_run_dense_with_a_note(name):
    loaded = family(name)
    dense = run_prefill(loaded, IDS[:320], MethodName.DENSE, make_config("dense", block_size=64))
    config, _ = sparse(MethodName.VERTICAL_SLASH, 2, 2)
    with kernels.use_backend("triton"):  # what CUDA would pick; the layers never reach a kernel
        run = run_prefill(loaded, IDS[:320], MethodName.VERTICAL_SLASH, config)
    dim = loaded.fingerprint.head_dim
    reasons = {row["layer"]: row["reason"] for row in run.trace.dense_layers()}
    assert set(reasons) == {0, 1}
    assert any(r.startswith(f"head dim {dim} (the Triton kernels take 16, 32, 64 or 128)") for r in reasons.values())
    assert torch.equal(run.logits, dense.logits)


def test_mistral_window_shorter_than_the_prompt_runs_dense():
    loaded = load_model(random_init="mistral-tiny", device="cpu")
    loaded.model.config.sliding_window = 128
    config, _ = sparse(MethodName.FLEXPREFILL, 2, 4)
    run = run_prefill(loaded, IDS[:320], MethodName.FLEXPREFILL, config)
    assert run.trace.dense_layers() == [{"layer": 0, "reason": "sliding window 128"},
                                        {"layer": 1, "reason": "sliding window 128"}]
    with torch.no_grad():
        own = loaded.model(input_ids=torch.tensor([IDS[:320]])).logits[0, -64:]
    assert torch.equal(run.logits, own.float())
    short = run_prefill(loaded, IDS[:128], MethodName.FLEXPREFILL, config)  # keys <= window: sparse path
    assert short.trace.dense_layers() == []


def test_report_names_the_dense_layers():
    doc = {"dense_layers": [{"layer": 0, "reason": "sliding window 128"}, {"layer": 2, "reason": "sliding window 128"},
                            {"layer": 1, "reason": "logit soft-cap 50"}]}
    assert dense_layers_line(doc) == ("3 layer(s) ran the model's dense attention: sliding window 128 "
                                      "(layers 0, 2); logit soft-cap 50 (layer 1)")
    assert dense_layers_line({"dense_layers": []}) is None
