"""The method config's ``kernel`` (auto, triton, flash): validated, applied per layer, reported."""
import pytest

import sharedattn.analysis.hf  # noqa: F401  (registers the attention functions)
from sharedattn.analysis.hf.prefill_run import run_prefill
from sharedattn.analysis.method.method_config import ConfigError, KernelChoice, MethodName, make_config

IDS = list(range(300, 812))


def cfg(**kw):
    return make_config("vertical-slash", block_size=64, dense_below=0, min_budget=64, gamma=0.3, **kw)


def test_validated_and_written():
    assert cfg().kernel is KernelChoice.AUTO and cfg(kernel="flash").kernel is KernelChoice.FLASH
    assert cfg(kernel="triton").to_json()["kernel"] == "triton"
    with pytest.raises(ConfigError, match="kernel must be one of auto, triton, flash"):
        cfg(kernel="cudnn")


def test_each_layer_reports_its_backend(tiny_model):
    auto = run_prefill(tiny_model, IDS, MethodName.VERTICAL_SLASH, cfg())
    assert auto.layer_kernels == ["reference", "reference"]  # CPU: the torch twin
    dense = run_prefill(tiny_model, IDS, MethodName.DENSE, make_config("dense", block_size=64, dense_below=0))
    assert dense.layer_kernels == ["sdpa", "sdpa"]
    # triton asked for: the session applies it around each layer (interpreted here), same output
    triton = run_prefill(tiny_model, IDS[:200], MethodName.VERTICAL_SLASH, cfg(kernel="triton"))
    assert triton.layer_kernels == ["triton", "triton"]
    twin = run_prefill(tiny_model, IDS[:200], MethodName.VERTICAL_SLASH, cfg())
    assert (triton.logits - twin.logits).abs().max() < 1e-3


def test_flash_without_it_is_a_config_error(tiny_model):
    with pytest.raises(ConfigError, match="kernel flash: the flash backend needs a CUDA GPU"):
        run_prefill(tiny_model, IDS, MethodName.VERTICAL_SLASH, cfg(kernel="flash"))
