"""The flash backend (flash-attn-4, called directly or through FlexAttention) on the GPU, against Triton
and the twin; the tests that set ``flash.COMPILE`` run each mode, the others the default (direct).

Skipped without CUDA (the whole folder), and these flash tests also skip, with the reason, where
flash-attn-4 cannot run (not installed, not a Hopper GPU): ``kernels.flash_unavailable()``. The
other tests here check what happens without it. Tolerance: twice torch's own bf16 error against
the fp32 twin, plus a small absolute term (as test_kernels_gpu.py).
"""
import time

import pytest
import torch
import torch.nn.functional as F

from sharedattn import kernels
from sharedattn.kernels import backend as kb
from sharedattn.kernels import flash
from sharedattn.kernels import reference as ref
from sharedattn.kernels.block_sparse import block_sparse_attention
from sharedattn.kernels.layout import BlockLayout
from sharedattn.kernels.limits import ConfigError

DEV = torch.device(torch.cuda.current_device()) if torch.cuda.is_available() else None
WHY = kb.flash_unavailable(DEV) if DEV is not None else "needs a CUDA device"
needs_flash = pytest.mark.skipif(WHY is not None, reason=f"flash backend unavailable: {WHY}")


def _use_mode(monkeypatch, mode: str) -> None:
    """Run flash in ``mode`` for this test; skip where that mode's packages are missing (``WHY``
    checked the default mode's)."""
    monkeypatch.setattr(flash, "COMPILE", mode)
    why = kb.flash_unavailable(DEV)
    if why:
        pytest.skip(f"flash backend unavailable in mode {mode}: {why}")


def _qkv(b, h, hkv, nq, nk, d, seed, dtype=torch.bfloat16):
    g = torch.Generator(device=DEV).manual_seed(seed)
    mk = lambda hh, n: torch.randn(b, hh, n, d, device=DEV, generator=g).to(dtype)  # noqa: E731
    return mk(h, nq), mk(hkv, nk), mk(hkv, nk)


def _layout(b, h, nq, nk, bs, density, seed, diag=True):
    g = torch.Generator(device=DEV).manual_seed(seed)
    nqb, nkb = ref.num_blocks(nq, bs), ref.num_blocks(nk, bs)
    mask = torch.rand(b, h, nqb, nkb, device=DEV, generator=g) < density
    if diag:
        r = torch.arange(nqb, device=DEV)
        mask[:, :, r, (torch.clamp((r + 1) * bs, max=nq) - 1 + nk - nq) // bs] = True
        mask[..., 0] = True
    return BlockLayout.from_dense(mask, bs, nq, nk)


def _check(q, k, v, layout, scale=None):
    """flash vs the fp32 twin within twice torch's bf16 error; flash vs Triton likewise."""
    want = ref.block_sparse_attention_ref(q, k, v, layout.to_dense(), layout.block_size, scale)
    keep = ref.block_mask_to_token_mask(layout.to_dense(), layout.nq, layout.nk, layout.block_size)
    keep = keep & ref.causal_token_mask(layout.nq, layout.nk, DEV)
    h = q.shape[1]
    torch_lp = F.scaled_dot_product_attention(q, ref.expand_kv(k, h), ref.expand_kv(v, h), attn_mask=keep,
                                              scale=scale).nan_to_num(0.0)
    tol = 2.0 * (torch_lp.float() - want).abs().max().item() + 1e-3
    with kernels.use_backend("flash"), kernels.record_backends() as ran:
        got = kernels.sparse_attention(q, k, v, layout, scale=scale)
    assert dict(ran) == {"flash": 1}
    assert got.dtype == q.dtype and got.shape == q.shape and torch.isfinite(got).all()
    assert (got.float() - want).abs().max().item() <= tol
    triton = block_sparse_attention(q, k, v, layout, scale=scale)
    assert (got.float() - triton.float()).abs().max().item() <= 2 * tol


CASES = [  # (b, h, hkv, nq, nk, d, bs, density): the CPU conversion cases at GPU sizes
    (1, 8, 2, 4096, 4096, 128, 128, 0.3),  # equal lengths, GQA
    (2, 4, 4, 2048, 2048, 64, 128, 0.5),  # batch 2, head dim 64
    (1, 4, 1, 3000, 3000, 64, 128, 0.4),  # ragged lengths
    (1, 4, 2, 2500, 2500, 128, 64, 0.3),  # block 64
]


@needs_flash
@pytest.mark.parametrize("b,h,hkv,nq,nk,d,bs,density", CASES)
@pytest.mark.parametrize("mode", flash.COMPILE_MODES)
def test_flash_matches_triton_and_twin(mode, monkeypatch, b, h, hkv, nq, nk, d, bs, density):
    _use_mode(monkeypatch, mode)
    q, k, v = _qkv(b, h, hkv, nq, nk, d, seed=nq + d)
    _check(q, k, v, _layout(b, h, nq, nk, bs, density, seed=bs))


@needs_flash
@pytest.mark.parametrize("nq,nk,d", [(2048, 2048, 128), (3000, 3000, 64), (3000, 3000, 128)])
def test_every_block_kept_equals_dense(nq, nk, d):
    q, k, v = _qkv(1, 8, 2, nq, nk, d, seed=7)
    layout = BlockLayout.dense_causal(1, 8, nq, nk, 128, DEV)
    _check(q, k, v, layout)
    with kernels.use_backend("flash"):
        got = kernels.sparse_attention(q, k, v, layout)
    dense = F.scaled_dot_product_attention(q, ref.expand_kv(k, 8), ref.expand_kv(v, 8),
                                           attn_mask=ref.causal_token_mask(nq, nk, DEV))
    assert (got.float() - dense.float()).abs().max().item() < 2e-2


@needs_flash
def test_only_the_diagonal_and_empty_rows():
    q, k, v = _qkv(1, 4, 2, 2048, 2048, 128, seed=8)
    _check(q, k, v, _layout(1, 4, 2048, 2048, 128, 0.0, seed=9))  # diagonal and block 0
    _check(q, k, v, _layout(1, 4, 2048, 2048, 128, 0.2, seed=10, diag=False), scale=0.05)  # rows keep nothing


@needs_flash
def test_auto_follows_the_rule():
    lay = BlockLayout.dense_causal(1, 1, 256, 256, 128, DEV)
    n = kb.AUTO_FLASH_MIN_KEYS[128]
    long = BlockLayout.dense_causal(1, 1, n, n, 128, DEV)
    q128 = torch.empty(1, 1, 256, 128, device=DEV, dtype=torch.bfloat16)
    q_long = torch.empty(1, 1, n, 128, device=DEV, dtype=torch.bfloat16)
    q_long64 = torch.empty(1, 1, n, 64, device=DEV, dtype=torch.bfloat16)
    assert kb.attention_backend(q128, lay) is kb.Backend.TRITON  # short: ours
    assert kb.attention_backend(q_long, long) is kb.Backend.FLASH
    few = kb.FLASH_MASS_MAX_SHARE[128]  # few heads mapped: flash + lse, then our mass pass
    assert kb.attention_backend(q_long, long, return_block_mass=True, mapped_share=few) is kb.Backend.FLASH
    assert kb.attention_backend(q_long, long, return_block_mass=True) is kb.Backend.TRITON  # count unknown
    assert kb.attention_backend(q128, lay, return_block_mass=True) is kb.Backend.TRITON  # short: ours, map or not
    assert kb.attention_backend(q_long64, long) is kb.Backend.TRITON
    with kernels.use_backend("flash"):
        assert kb.attention_backend(q128, lay) is kb.Backend.FLASH
        assert kb.attention_backend(q128, lay, return_block_mass=True) is kb.Backend.FLASH


@needs_flash
@pytest.mark.parametrize("nq,nk,bs", [(1000, 3000, 128), (1024, 4096, 64)])
@pytest.mark.parametrize("mode", flash.COMPILE_MODES)
def test_chunked_prefill_stays_on_triton(mode, monkeypatch, nq, nk, bs):
    """Queries shorter than the keys: flash-attn-4 did not compile the end-aligned mask through
    FlexAttention on the H200 (session 6) and the direct call is not measured on them, so in every
    mode auto runs ours and asking for flash is one clear error."""
    _use_mode(monkeypatch, mode)
    q, k, v = _qkv(1, 8, 2, nq, nk, 128, seed=13)
    layout = _layout(1, 8, nq, nk, bs, 0.3, seed=14)
    assert "chunked prefill" in flash.call_unsupported(q, layout)
    assert kb.attention_backend(q, layout) is kb.Backend.TRITON
    with kernels.use_backend("flash"), pytest.raises(ConfigError, match="chunked prefill"):
        kernels.sparse_attention(q, k, v, layout)


MASS_CASES = [  # (b, h, hkv, nq, nk, d, bs, density): SharePrefill's pivotal heads' map on flash
    (1, 8, 2, 4096, 4096, 128, 128, 0.3),  # head dim 128, GQA
    (1, 14, 2, 4096, 4096, 64, 128, 0.3),  # Qwen2.5-Coder-0.5B's heads, head dim 64
    (2, 4, 4, 3000, 3000, 64, 128, 0.5),  # batch 2, ragged last block
    (1, 4, 2, 2500, 2500, 128, 64, 0.3),  # block 64
]


def _mass_heads(b, h):
    wanted = torch.zeros(b, h, dtype=torch.bool, device=DEV)
    wanted[0, ::3] = True  # a subset: heads 0, 3, 6, ...
    wanted[-1, h - 1] = True
    return wanted


@needs_flash
@pytest.mark.parametrize("b,h,hkv,nq,nk,d,bs,density", MASS_CASES)
@pytest.mark.parametrize("subset", [True, False])
@pytest.mark.parametrize("mode", ["direct", "dynamic"])
def test_flash_mass_map_matches_triton(mode, monkeypatch, b, h, hkv, nq, nk, d, bs, density, subset):
    """flash + lse, then the mass pass for the mapped heads, against Triton's one-call map on the same
    layout: maps within fp32 rounding, outputs within bf16 rounding, the other heads' maps zero, one
    call counted as flash; the lse against its fp32 twin (this is where its base is checked: the
    direct call's is flash-attn-4's own, FlexAttention's goes through ``lse_to_natural``)."""
    _use_mode(monkeypatch, mode)
    q, k, v = _qkv(b, h, hkv, nq, nk, d, seed=nq + d + 1)
    layout = _layout(b, h, nq, nk, bs, density, seed=bs + 1)
    wanted = _mass_heads(b, h) if subset else None
    with kernels.use_backend("flash"), kernels.record_backends() as ran:
        out, mass = kernels.sparse_attention(q, k, v, layout, return_block_mass=True, mass_heads=wanted)
    assert dict(ran) == {"flash": 1}
    t_out, t_mass = block_sparse_attention(q, k, v, layout, return_block_mass=True, mass_heads=wanted,
                                           mass_pass="one")
    assert mass.dtype == torch.float32 and mass.shape == layout.shape and torch.isfinite(mass).all()
    print(f"flash+lse map vs Triton one-pass map: max abs diff {(mass - t_mass).abs().max().item():.2e}")
    assert (mass - t_mass).abs().max().item() <= 1e-4
    sel = torch.ones(b, h, dtype=torch.bool, device=DEV) if wanted is None else wanted
    assert bool((mass[~sel] == 0).all())
    rows = mass[sel].sum(-1)  # [n, nqb]: every row block keeps its diagonal, so each sums to 1
    assert (rows - 1).abs().max().item() <= 1e-3
    assert out.dtype == q.dtype and torch.allclose(out.float(), t_out.float(), atol=1e-2, rtol=2e-2)  # bf16 ulps
    _, lse = flash.flash_sparse_attention(q, k, v, layout, return_lse=True)
    want = ref.sparse_lse_ref(q, k, layout.to_dense(), bs)
    assert lse.shape == q.shape[:3] and lse.dtype == torch.float32
    assert (lse - want).abs().max().item() <= 2e-3


@needs_flash
@pytest.mark.parametrize("mode", flash.COMPILE_MODES)
def test_flash_mass_map_rows_that_keep_nothing(mode, monkeypatch):
    """Rows that keep no block: lse -inf, map rows zero (Triton's too), output zeros."""
    _use_mode(monkeypatch, mode)
    q, k, v = _qkv(1, 4, 2, 2048, 2048, 128, seed=21)
    layout = _layout(1, 4, 2048, 2048, 128, 0.2, seed=22, diag=False)
    empty = layout.counts == 0  # [B, H, nqb]
    assert bool(empty.any())
    with kernels.use_backend("flash"):
        out, mass = kernels.sparse_attention(q, k, v, layout, return_block_mass=True, scale=0.05)
    _, t_mass = block_sparse_attention(q, k, v, layout, return_block_mass=True, scale=0.05)
    assert (mass - t_mass).abs().max().item() <= 1e-4
    assert bool((mass[empty] == 0).all())
    _, lse = flash.flash_sparse_attention(q, k, v, layout, return_lse=True, scale=0.05)
    rows = empty.repeat_interleave(128, dim=-1)[..., :2048]  # [B, H, Nq]
    assert bool((lse[rows] == float("-inf")).all()) and torch.isfinite(lse[~rows]).all()
    assert bool((out[rows] == 0).all())


@needs_flash
def test_pivotal_calls_keep_their_block_mass_map():
    """auto with the map: where flash runs without it (long rows) and few heads are mapped (one of
    four, counted by the caller), flash + lse + the mass pass."""
    n = kb.AUTO_FLASH_MIN_KEYS[128]
    q, k, v = _qkv(1, 4, 2, n, n, 128, seed=11)
    layout = _layout(1, 4, n, n, 128, 0.1, seed=12)
    wanted = torch.tensor([[True, False, False, False]], device=DEV)
    with kernels.use_backend("auto"), kernels.record_backends() as ran:
        out, mass = kernels.sparse_attention(q, k, v, layout, return_block_mass=True, mass_heads=wanted,
                                             num_mass_heads=1)
    assert dict(ran) == {"flash" if kb.FLASH_MASS_MAX_SHARE[128] >= 0.25 else "triton": 1}
    assert mass.shape == layout.shape
    _, t_mass = block_sparse_attention(q, k, v, layout, return_block_mass=True, mass_heads=wanted)
    assert (mass - t_mass).abs().max().item() <= 1e-4


@needs_flash
@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_new_length_after_warm_up(mode, monkeypatch):
    """The first call at a new prompt length after warm-up (target: well under 0.5 s). The direct
    mode is not timed here (docs/scripts/flash_bench.py measures its first calls)."""
    _use_mode(monkeypatch, mode)
    times = []
    for n in (4096, 4352, 5120, 6000):
        q, k, v = _qkv(1, 8, 2, n, n, 128, seed=n)
        layout = _layout(1, 8, n, n, 128, 0.3, seed=n)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        flash.flash_sparse_attention(q, k, v, layout)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    print(f"flash {mode}: first calls at new lengths {['%.3f' % t for t in times]} s")
    assert max(times[1:]) < (0.5 if mode == "dynamic" else 2.0)


def test_flash_without_it_is_a_config_error(monkeypatch):
    monkeypatch.setattr(flash, "flash_unavailable", lambda device=None: "flash-attn-4 is not installed")
    q, k, v = _qkv(1, 2, 1, 512, 512, 128, seed=1)
    layout = _layout(1, 2, 512, 512, 128, 0.5, seed=1)
    with kernels.use_backend("flash"), pytest.raises(ConfigError, match="kernel flash: flash-attn-4 is not"):
        kernels.sparse_attention(q, k, v, layout)
    with kernels.record_backends() as ran:  # auto without flash: today's Triton path
        kernels.sparse_attention(q, k, v, layout)
    assert dict(ran) == {"triton": 1}
