"""What the CPU and GPU family tests share: the tiny families, the layers whose features the sparse
path does not honour, the prompt, and the configs (tests/test_analysis/test_families.py,
tests/test_gpu/test_families_gpu.py). Importable from every test: pytest puts this folder, the
one holding conftest.py, on sys.path."""
from types import SimpleNamespace

import torch

from sharedattn.analysis.hf.prefill_run import run_prefill
from sharedattn.analysis.method.method_config import MethodName, make_config

FAMILIES = ["llama-tiny", "qwen2-tiny", "qwen3-tiny", "mistral-tiny", "gemma2-tiny", "gemma3-tiny", "phi3-tiny"]
# The layers whose features the sparse path does not honour at 512 tokens, and why.
FALLBACKS = {"qwen2-tiny": {1: "sliding window 128"},
             "gemma2-tiny": {0: "sliding window 128", 1: "logit soft-cap 50"},
             "gemma3-tiny": {0: "sliding window 128"}}
IDS = list(range(300, 812))  # 512 tokens: 8 blocks of 64


def keep_all(method: MethodName):
    """A config whose layouts keep every block (the prefill must equal dense bit for bit)."""
    return make_config(method.value, block_size=64, dense_below=0, min_budget=1 << 16, gamma=1.0,
                       **({"sink_tokens": 1 << 16, "local_tokens": 1 << 16} if method is MethodName.A_SHAPE else {}))


def sparse(method: MethodName, num_layers: int, num_heads: int):
    """A config that drops blocks, and for SharePrefill a lookup with every head in one cluster."""
    extra = {"tau_qa": 0.0, "tau_fb": 1.0} if method is MethodName.SHAREPREFILL else {}
    config = make_config(method.value, block_size=64, dense_below=0, min_budget=64, gamma=0.1,
                         local_tokens=128, sink_tokens=64, **extra)
    lookup = SimpleNamespace(shared_clusters=[SimpleNamespace(
        heads=tuple((layer, head) for layer in range(num_layers) for head in range(num_heads)))])
    return config, lookup if method is MethodName.SHAREPREFILL else None


def check_keep_all_equals_dense(loaded, whole_layer: bool = False) -> None:
    """Every method, with layouts that keep every block, gives dense's logits bit for bit (the
    synced path runs such a layer on dense SDPA). ``whole_layer`` (CUDA): the layer as one step,
    which runs its sparse kernel on the full layout instead (it cannot look at the layout before it
    launches): equal to dense within bf16 rounding."""
    dense = run_prefill(loaded, IDS[:320], MethodName.DENSE, make_config("dense", block_size=64))
    for method in MethodName:
        run = run_prefill(loaded, IDS[:320], method, keep_all(method), whole_layer=whole_layer)
        if whole_layer and method is not MethodName.DENSE:
            scale = dense.logits.float().abs().max()
            assert (run.logits.float() - dense.logits.float()).abs().max() <= 0.02 * scale, method
        else:
            assert torch.equal(run.logits, dense.logits), method
        assert run.trace.overall_density() == 1.0
