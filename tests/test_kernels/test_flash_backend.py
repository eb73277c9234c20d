"""The flash backend's plumbing on CPU: the choice per call, errors, counting, detection, compiling.

flash-attn-4 itself needs a Hopper GPU (tests/test_gpu/test_flash_gpu.py); here the rule and the
dynamo side of the compiled call are checked with CPU tensors and a recording torch.compile backend.
"""
import os
import sys

import pytest
import torch

from sharedattn import kernels
from sharedattn.kernels import backend as kb
from sharedattn.kernels import flash
from sharedattn.kernels import reference as ref
from sharedattn.kernels.layout import BlockLayout
from sharedattn.kernels.limits import ConfigError

from ._helpers import make_qkv, random_layout, recorded_compiles


def test_cpu_choices():
    q, k, v = make_qkv(1, 2, 1, 128, 128, 32, torch.float32)
    lay = random_layout(1, 2, 128, 128, 64, 0.5)
    assert kb.attention_backend(q, lay) is kb.Backend.REFERENCE
    for choice in ("auto", "flash"):
        with kernels.use_backend(choice):  # the other kernels keep the device's default
            assert kb.select_backend(q) is kb.Backend.REFERENCE
    with kernels.use_backend("auto"):
        assert kb.attention_backend(q, lay, return_block_mass=True) is kb.Backend.REFERENCE
    with kernels.use_backend("triton"):
        assert kb.attention_backend(q, lay) is kb.Backend.TRITON


def test_flash_asked_for_without_it_is_one_line():
    q, k, v = make_qkv(1, 2, 1, 128, 128, 32, torch.float32)
    lay = random_layout(1, 2, 128, 128, 64, 0.5)
    with kernels.use_backend("flash"), pytest.raises(ConfigError) as err:
        kernels.sparse_attention(q, k, v, lay)
    assert "\n" not in str(err.value) and str(err.value).startswith("kernel flash:")
    with pytest.raises(ConfigError, match="CUDA"):
        kernels.require_flash("cpu")
    assert "CUDA" in kernels.flash_unavailable("cpu")


def test_environment_variable(monkeypatch):
    q, k, v = make_qkv(1, 2, 1, 128, 128, 32, torch.float32)
    lay = random_layout(1, 2, 128, 128, 64, 0.5)
    monkeypatch.setenv(kb.ENV_VAR, "flash")
    with pytest.raises(ConfigError):
        kernels.sparse_attention(q, k, v, lay)
    monkeypatch.setenv(kb.ENV_VAR, "auto")
    assert torch.allclose(kernels.sparse_attention(q, k, v, lay),
                          ref.block_sparse_attention_ref(q, k, v, lay.to_dense(), 64), atol=1e-5)


def test_record_backends():
    q, k, v = make_qkv(1, 2, 1, 128, 128, 32, torch.float32)
    lay = random_layout(1, 2, 128, 128, 64, 0.5)
    with kernels.record_backends() as outer:
        kernels.sparse_attention(q, k, v, lay)
        with kernels.record_backends() as inner, kernels.use_backend("triton"):
            kernels.sparse_attention(q, k, v, lay)
        kernels.block_mass(q, k, 64)  # not attention: not counted
    assert inner == {"triton": 1} and outer == {"reference": 1, "triton": 1}
    assert kb._recorders == []


@pytest.fixture
def flash_here(monkeypatch):
    """Pretend flash-attn-4 runs on this device (the rule's inputs are shapes and sizes)."""
    monkeypatch.setattr(flash, "flash_unavailable", lambda device=None: None)


@pytest.mark.parametrize("d,nk,bs,mass,want", [
    (128, 24576, 128, False, "flash"),
    (128, 131072, 128, False, "flash"),
    (128, 16384, 128, False, "triton"),  # short rows: ours
    (64, 32768, 128, False, "triton"),  # head dim 64: ours at 32K
    (64, 131072, 128, False, "flash"),  # head dim 64: flash at 128K
    (128, 32768, 64, False, "triton"),  # block 64: not measured
    (128, 32768, 128, True, "flash"),  # with the map of a few heads: flash + lse, then our mass pass
    (128, 16384, 128, True, "triton"),  # ... only where flash runs without the map
])
def test_auto_rule(flash_here, d, nk, bs, mass, want):
    q = torch.empty(1, 32, nk, d, dtype=torch.bfloat16, device="meta")
    lay = BlockLayout.dense_causal(1, 1, 2 * bs, 2 * bs, bs, torch.device("cpu"))
    object.__setattr__(lay, "nk", nk)  # the rule reads the geometry only
    object.__setattr__(lay, "nq", nk)
    share = 1 / 32 if mass else None  # one head of 32 mapped
    assert kb.auto_backend(q, lay, mass, share).value == want
    object.__setattr__(lay, "nq", nk - 1)  # chunked prefill (queries shorter than keys): ours
    assert kb.auto_backend(q, lay, mass, share) is kb.Backend.TRITON


@pytest.mark.parametrize("nk,share,want", [
    (32768, 0.1, "triton"),  # short rows and few kept blocks: flash's per-call time dominates
    (32768, 0.3, "flash"),
    (32768, None, "flash"),  # share not known on the host: the length rule alone
    (65536, 0.05, "flash"),  # from 64K keys flash wins at every measured share
])
def test_auto_rule_reads_the_kept_share(flash_here, nk, share, want):
    below, least = kb.AUTO_FLASH_MIN_KEPT_SHARE[128]
    assert below == 65536 and 0.1 < least < 0.3  # the measured crossover at 32K (session 9)
    q = torch.empty(1, 32, nk, 128, dtype=torch.bfloat16, device="meta")
    geometry = kb.Geometry(nk, nk, 128)
    assert kb.auto_backend(q, geometry, kept_share=share).value == want
    assert kb.auto_backend(q, geometry, True, 1 / 32, share).value == want  # with a few heads' map too


def test_auto_without_flash_is_triton(monkeypatch):
    monkeypatch.setattr(flash, "flash_unavailable", lambda device=None: "not installed")
    q = torch.empty(1, 32, 32768, 128, dtype=torch.bfloat16, device="meta")
    lay = BlockLayout.dense_causal(1, 1, 256, 256, 128, torch.device("cpu"))
    object.__setattr__(lay, "nk", 32768)
    assert kb.auto_backend(q, lay) is kb.Backend.TRITON


def test_call_unsupported():
    lay = BlockLayout.dense_causal(1, 1, 256, 256, 128, torch.device("cpu"))
    ok = torch.empty(1, 1, 256, 128, dtype=torch.bfloat16, device="meta")
    assert flash.call_unsupported(ok, lay) is None
    assert "head dim 96" in flash.call_unsupported(torch.empty(1, 1, 256, 96, dtype=torch.bfloat16, device="meta"),
                                                   lay)
    assert "dtype" in flash.call_unsupported(ok.float(), lay)
    small = BlockLayout.dense_causal(1, 1, 256, 256, 32, torch.device("cpu"))
    assert "block size 32" in flash.call_unsupported(ok, small)
    chunked = BlockLayout.dense_causal(1, 1, 128, 256, 128, torch.device("cpu"))
    assert "chunked prefill" in flash.call_unsupported(ok[:, :, :128], chunked)


def test_detection_adds_the_dsl_packages_folder(tmp_path, monkeypatch):
    """A --target install: nvidia_cutlass_dsl/ is importable, cutlass only from its dsl_packages/."""
    pkg = tmp_path / "nvidia_cutlass_dsl"
    (pkg / "dsl_packages" / "cutlass").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "dsl_packages" / "cutlass" / "__init__.py").write_text("")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    assert flash._cutlass_on_path()
    assert sys.path[0] == os.path.join(str(pkg), "dsl_packages")


def test_missing_packages_name_the_extra():
    flash._packages_missing.cache_clear()
    try:
        reason = flash._packages_missing()
    finally:
        flash._packages_missing.cache_clear()
    if reason is not None:  # CPU CI does not install the extra
        assert "sharedattn[flash]" in reason or "torch" in reason


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_compiled_call_graphs(mode, monkeypatch):
    """The compiled body traces whole (fullgraph) and, dynamic, needs one graph for every equal
    length and one for every chunked geometry; static needs one per length. A recording backend
    runs the graphs eagerly (FlexAttention's CPU math path: mask_mod only, so dense layouts)."""
    with recorded_compiles(monkeypatch, mode) as (graphs, recording):
        call = flash._compiled(mode, recording)
        for nq, nk in [(256, 256), (320, 320), (384, 384), (200, 450), (150, 450)]:
            q, k, v = make_qkv(1, 4, 2, nq, nk, 64, torch.float32, seed=nq)
            lay = BlockLayout.dense_causal(1, 4, nq, nk, 64, q.device)
            tensors = flash.block_mask_tensors(lay, full_width=lay.num_kv_blocks if mode == "static" else None)
            offset = None if nq == nk else (
                nk - nq if mode == "static" else torch.full((1,), nk - nq, dtype=torch.int32))
            with flash._dynamo_settings(mode):
                out = call(q, k, v, *tensors, offset, 64, 0.125)
            assert (out - ref.attention_ref(q, k, v, 0.125)).abs().max().item() < 1e-5
    assert len(graphs) == (2 if mode == "dynamic" else 5)


def test_dynamic_mode_keeps_a_graph_per_head_configuration(monkeypatch):
    """One process may run many head configurations (several models, the GPU suite): dynamic mode
    must keep more graphs than dynamo's default limit of 8 (past it, fullgraph raises)."""
    configs = [(h, 1) for h in range(1, 11)] + [(4, 4), (8, 2)]
    with recorded_compiles(monkeypatch, "dynamic") as (graphs, recording):
        call = flash._compiled("dynamic", recording)
        for heads, kv_heads in configs:
            q, k, v = make_qkv(1, heads, kv_heads, 128, 128, 64, torch.float32, seed=heads)
            lay = BlockLayout.dense_causal(1, heads, 128, 128, 64, q.device)
            with flash._dynamo_settings("dynamic"):
                out = call(q, k, v, *flash.block_mask_tensors(lay), None, 64, 0.125)
            assert (out - ref.attention_ref(q, k, v, 0.125)).abs().max().item() < 1e-5
    assert len(graphs) == len(configs) > 8
