"""The flash backend's plumbing on CPU: the choice per call, errors, counting, detection, compiling.

flash-attn-4 itself needs a Hopper GPU (tests/test_gpu/test_flash_gpu.py); here the rule and the
dynamo side of the compiled call are checked with CPU tensors and a recording torch.compile backend,
and the direct call with a stand-in for flash-attn-4's interface (``_helpers.FakeFlashAttn4``).
"""
import importlib
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

from ._helpers import FakeFlashAttn4, make_qkv, random_layout, recorded_compiles


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


@pytest.mark.parametrize("d,nk,share,want", [
    (128, 8192, 0.5, "triton"),  # short rows and few kept blocks: flash's per-call time dominates
    (128, 8192, 1.0, "flash"),
    (128, 4096, 1.0, "triton"),  # below the shortest measured length
    (128, 16384, 0.1, "triton"),
    (128, 16384, 0.3, "flash"),
    (128, 16384, None, "triton"),  # share not known on the host: the length rule alone
    (128, 32768, 0.05, "triton"),
    (128, 32768, 0.1, "flash"),
    (128, 32768, None, "flash"),
    (128, 65536, 0.05, "flash"),  # from 64K keys flash wins at every measured share
    (64, 65536, 1.0, "triton"),  # head dim 64: ours below 128K keys at every share
    (64, 131072, 0.05, "triton"),
    (64, 131072, 0.3, "flash"),
    (64, 131072, None, "flash"),
])
def test_auto_rule_reads_the_kept_share(flash_here, d, nk, share, want):
    """The session 10 grid's crossovers (flash called directly), at the steps' edges."""
    q = torch.empty(1, 32, nk, d, dtype=torch.bfloat16, device="meta")
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


@pytest.mark.parametrize("mode", flash.COMPILE_MODES)
def test_missing_packages_name_the_extra(mode):
    flash._packages_missing.cache_clear()
    try:
        reason = flash._packages_missing(mode)
    finally:
        flash._packages_missing.cache_clear()
    if reason is not None:  # CPU CI does not install the extra
        assert "sharedattn[flash]" in reason or "torch" in reason


# ---- the direct call ------------------------------------------------------------------------------
def test_direct_is_the_default_mode(monkeypatch):
    """Without the environment variable the mode is direct (read at import: the module is reloaded);
    the availability check asks for the current mode's packages; a mode not known is its reason,
    and an error at the call."""
    saved = os.environ.pop(flash.COMPILE_ENV, None)
    try:
        assert importlib.reload(flash).COMPILE == "direct" == flash.COMPILE_MODES[0]
    finally:
        if saved is not None:
            os.environ[flash.COMPILE_ENV] = saved
        importlib.reload(flash)
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(flash, "_device_unsupported", lambda index: None)
    monkeypatch.setattr(flash, "_packages_missing", lambda mode: asked.append(mode))
    for mode in flash.COMPILE_MODES:
        monkeypatch.setattr(flash, "COMPILE", mode)
        assert flash.flash_unavailable("cuda:0") is None
    assert asked == list(flash.COMPILE_MODES)
    monkeypatch.setattr(flash, "COMPILE", "eager")
    reason = flash.flash_unavailable("cuda:0")
    assert reason == "SHAREDATTN_FLASH_COMPILE must be direct, dynamic or static, got 'eager'"
    assert asked == list(flash.COMPILE_MODES)
    q, k, v = make_qkv(1, 2, 1, 128, 128, 32, torch.float32)
    with pytest.raises(ConfigError, match="direct, dynamic or static, got 'eager'"):
        flash.flash_sparse_attention(q, k, v, random_layout(1, 2, 128, 128, 64, 0.5))


INTERFACE = ("def _flash_attn_fwd(q, k, v, qv=None, softmax_scale=None, causal=False, {extra}return_lse=False):\n"
             "    pass\n")
SPARSITY = ("from typing import NamedTuple\n\n\nclass BlockSparseTensorsTorch(NamedTuple):\n"
            + "".join(f"    {f}: object = None\n" for f in ("mask_block_cnt", "mask_block_idx", "full_block_cnt",
                                                              "full_block_idx", "block_size")))


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """A flash-attn-4 installed in ``tmp_path`` whose ``flash_attn.cute`` and its modules raise when
    imported: ``write(interface=..., block_sparsity=...)`` writes them (None: the file is left out)."""
    for name in [m for m in sys.modules if m.split(".")[0] == "flash_attn"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    monkeypatch.setattr(flash, "_cutlass_on_path", lambda: True)
    cute = tmp_path / "flash_attn" / "cute"
    cute.mkdir(parents=True)
    (tmp_path / "flash_attn" / "__init__.py").write_text("")
    imported = "raise ImportError('imported by the availability check')\n"
    (cute / "__init__.py").write_text(imported)

    def write(**sources):
        for module, text in sources.items():
            if text is not None:
                (cute / f"{module}.py").write_text(imported + text)
        importlib.invalidate_caches()
        flash._packages_missing.cache_clear()
        return cute

    yield write
    flash._packages_missing.cache_clear()
    for name in [m for m in sys.modules if m.split(".")[0] == "flash_attn"]:
        del sys.modules[name]


@pytest.mark.parametrize("interface,sparsity,want", [
    (INTERFACE.format(extra="block_sparse_tensors=None, "), SPARSITY, None),
    (INTERFACE.format(extra=""), SPARSITY, "flash_attn.cute.interface._flash_attn_fwd has no block_sparse_tensors"),
    ("def flash_attn_func(q, k, v):\n    pass\n", SPARSITY, "has no flash_attn.cute.interface._flash_attn_fwd"),
    (INTERFACE.format(extra="block_sparse_tensors=None, "), None,
     "has no flash_attn.cute.block_sparsity.BlockSparseTensorsTorch"),
    (INTERFACE.format(extra="block_sparse_tensors=None, "), SPARSITY.replace("    block_size", "    tile"),
     "BlockSparseTensorsTorch has no block_size"),
])
def test_direct_mode_reads_the_installed_source(installed, interface, sparsity, want):
    """Direct mode checks flash-attn-4's source for the names and arguments it uses, importing none
    of ``flash_attn.cute`` (whose modules here raise when imported); the FlexAttention modes do not
    look at them."""
    installed(interface=interface, block_sparsity=sparsity)
    reason = flash._packages_missing("direct")
    if want is None:
        assert reason is None
    else:
        assert want in reason and "SHAREDATTN_FLASH_COMPILE=dynamic" in reason and "sharedattn[flash]" in reason
    assert not [m for m in sys.modules if m.startswith("flash_attn.cute")]
    dynamic = flash._packages_missing("dynamic")
    assert dynamic is None or "FlexAttention FLASH backend" in dynamic


def test_direct_mode_without_a_source_to_read(installed):
    """A module installed without its source is not read (its first call imports it)."""
    import py_compile

    cute = installed(block_sparsity=SPARSITY)
    source = cute / "compiled.py"
    source.write_text(INTERFACE.format(extra=""))  # it lacks an argument: it would fail if read
    py_compile.compile(str(source), cfile=str(cute / "interface.pyc"))
    source.unlink()
    importlib.invalidate_caches()
    assert flash._packages_missing("direct") is None
    (cute / "interface.pyc").unlink()
    installed()
    assert "has no flash_attn.cute.interface._flash_attn_fwd" in flash._packages_missing("direct")


@pytest.fixture
def fake_fa4(monkeypatch):
    """Direct mode, with ``FakeFlashAttn4`` as flash-attn-4."""
    monkeypatch.setattr(flash, "COMPILE", "direct")
    return FakeFlashAttn4().install(monkeypatch)


DIRECT_CASES = [  # (b, h, hkv, n, d, bs, density, seed)
    (1, 4, 2, 200, 32, 64, 0.5, 1),  # GQA, ragged last block
    (2, 4, 1, 256, 64, 128, 0.4, 2),  # batch 2, one KV head, block 128
    (1, 2, 2, 512, 32, 64, 0.1, 3),  # sparse: the layout's lists (5 wide) narrower than nkb (8)
]


def _direct_case(b, h, hkv, n, d, bs, density, seed):
    """Inputs and a layout in which head (0, 1) keeps nothing in query block 1 (rows that see no key)."""
    q, k, v = make_qkv(b, h, hkv, n, n, d, torch.float32, seed=seed)
    dense = random_layout(b, h, n, n, bs, density, seed=seed).to_dense()
    dense[0, 1, 1] = False
    return q, k, v, BlockLayout.from_dense(dense, bs, n, n)


@pytest.mark.parametrize("case", DIRECT_CASES)
@pytest.mark.parametrize("return_lse", [False, True])
def test_direct_call_hands_flash_attn_4_our_tensors(fake_fa4, case, return_lse):
    """What goes in: q/k/v as [B, N, H, D] views of ours (no copy; last dim contiguous), causal, our
    scale, the layout's block lists with the full lists nkb wide and our block size. What comes out:
    the kernel's output as a [B, H, N, D] view (no copy), the twin's values; its log-sum-exp in
    natural log as it wrote it, but -inf (not the +inf it wrote) for rows that see no key."""
    q, k, v, lay = _direct_case(*case)
    res = flash.flash_sparse_attention(q, k, v, lay, scale=0.3, return_lse=return_lse)
    (call,) = fake_fa4.calls
    for name, x in (("q", q), ("k", k), ("v", v)):
        got = call[name]
        assert got.shape == x.transpose(1, 2).shape and got.stride(-1) == 1
        assert got.data_ptr() == x.data_ptr() and torch.equal(got, x.transpose(1, 2))
    assert call["causal"] is True and call["softmax_scale"] == 0.3 and call["return_lse"] is return_lse
    sparse = call["block_sparse_tensors"]
    assert sparse.block_size == (lay.block_size, lay.block_size)
    given = (sparse.mask_block_cnt, sparse.mask_block_idx, sparse.full_block_cnt, sparse.full_block_idx)
    for got, want in zip(given, flash.block_mask_tensors(lay, full_width=lay.num_kv_blocks), strict=True):
        assert got.dtype == want.dtype and torch.equal(got, want)
    assert sparse.full_block_idx.shape[-1] == lay.num_kv_blocks
    out, lse = res if return_lse else (res, None)
    (kernel_out, kernel_lse), = fake_fa4.outputs
    assert out.shape == q.shape and out.dtype == q.dtype
    assert out.data_ptr() == kernel_out.data_ptr() and torch.equal(out, kernel_out.transpose(1, 2))
    dense = lay.to_dense()
    assert (out - ref.block_sparse_attention_ref(q, k, v, dense, lay.block_size, 0.3)).abs().max().item() < 1e-5
    if return_lse:
        want = ref.sparse_lse_ref(q, k, dense, lay.block_size, 0.3)
        empty = want == float("-inf")
        assert bool(empty.any()) and bool((kernel_lse[empty] == float("inf")).all())
        assert lse.shape == q.shape[:3] and lse.dtype == torch.float32
        assert torch.equal(lse == float("-inf"), empty) and (lse - want)[~empty].abs().max().item() < 1e-5


def test_direct_call_on_a_models_head_view(fake_fa4):
    """q/k/v as a model hands them over ([B, H, N, D] views of [B, N, H, D] projections): flash-attn-4
    gets the projections themselves, and the output's [B, N, H, D] view, which the transformers
    integration returns, is contiguous (its ``.contiguous()`` copies nothing)."""
    q, k, v, lay = _direct_case(*DIRECT_CASES[0])
    q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    out = flash.flash_sparse_attention(q, k, v, lay, scale=0.3)
    (call,) = fake_fa4.calls
    assert all(call[name].is_contiguous() for name in "qkv")
    assert out.transpose(1, 2).is_contiguous() and out.transpose(1, 2).contiguous().data_ptr() == out.data_ptr()


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
