"""The kernel checks of tests/test_kernels on a CUDA GPU: bf16/fp16, long sequences.

Skipped without CUDA (tests/conftest.py marks everything here ``gpu``). Tolerances are
calibrated on torch itself: the kernel's error against an fp32 reference must be at most twice
the error of torch's own attention in the same low precision, plus a small absolute term.
"""
import pytest
import torch
import torch.nn.functional as F

from sharedattn.kernels import estimate as est
from sharedattn.kernels import reference as ref
from sharedattn.kernels.block_sparse import AttnConfig, block_mass_map, block_sparse_attention
from sharedattn.kernels.layout import BlockLayout

DEV = torch.device(torch.cuda.current_device()) if torch.cuda.is_available() else None


def _qkv(b, h, hkv, nq, nk, d, dtype, seed):
    g = torch.Generator(device=DEV).manual_seed(seed)
    mk = lambda hh, n: torch.randn(b, hh, n, d, device=DEV, generator=g).to(dtype)  # noqa: E731
    return mk(h, nq), mk(hkv, nk), mk(hkv, nk)


def _layout(b, h, nq, nk, bs, density, seed):
    g = torch.Generator(device=DEV).manual_seed(seed)
    nqb, nkb = ref.num_blocks(nq, bs), ref.num_blocks(nk, bs)
    mask = torch.rand(b, h, nqb, nkb, device=DEV, generator=g) < density
    r = torch.arange(nqb, device=DEV)
    mask[:, :, r, (torch.clamp((r + 1) * bs, max=nq) - 1 + nk - nq) // bs] = True
    mask[..., 0] = True
    return BlockLayout.from_dense(mask, bs, nq, nk)


def _torch_lowp(q, k, v, token_mask):
    """torch's own attention in q's dtype with an explicit mask (the calibration baseline)."""
    h = q.shape[1]
    return F.scaled_dot_product_attention(q, ref.expand_kv(k, h), ref.expand_kv(v, h), attn_mask=token_mask)


CASES = [  # (b, h, hkv, nq, nk, d, bs, density)
    (1, 8, 2, 4096, 4096, 128, 128, 0.3),
    (2, 4, 4, 3000, 3000, 64, 64, 0.5),
    (1, 6, 2, 1000, 2500, 128, 64, 0.2),  # q shorter than k, ragged
    (1, 4, 1, 8192, 8192, 128, 128, 1.0),  # long, dense
    (1, 3, 1, 2049, 2049, 64, 128, 0.1),
]


VARIANTS = {  # launch variants besides the default: (tma, order, transformers-style K/V views)
    "default": None, "pointers-heads": (False, "heads", False), "tma-kv": (True, "kv", False),
    "tma-kv-views": (True, "kv", True), "pointers-kv-views": (False, "kv", True),
}


def _variant(name, bs, q, k, v):
    """(config, k, v) for a variant; views are [B, N, H_kv, D] tensors seen as [B, H_kv, N, D]."""
    spec = VARIANTS[name]
    if spec is None:
        return None, k, v
    tma, order, views = spec
    if views:
        k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (k, v))
    return AttnConfig(min(128, bs), 64, 4, 2, tma=tma, order=order), k, v


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_block_sparse_matches_reference(case, dtype, variant):
    b, h, hkv, nq, nk, d, bs, density = case
    q, k, v = _qkv(b, h, hkv, nq, nk, d, dtype, seed=nq + h)
    lay = _layout(b, h, nq, nk, bs, density, seed=nk)
    out = torch.full_like(q, float("nan"))
    cfg, k, v = _variant(variant, bs, q, k, v)
    o, mass = block_sparse_attention(q, k, v, lay, return_block_mass=True, out=out, config=cfg)
    assert not torch.isnan(o).any()
    dense = lay.to_dense()
    ref_o, ref_m = ref.block_sparse_attention_ref(q.float(), k.float(), v.float(), dense, bs,
                                                   return_block_mass=True)
    tok = ref.block_mask_to_token_mask(dense, nq, nk, bs) & ref.causal_token_mask(nq, nk, DEV)
    lowp_err = (_torch_lowp(q, k, v, tok).float() - ref_o).abs().max().item()
    err = (o.float() - ref_o).abs().max().item()
    assert err <= 2 * lowp_err + 1e-3, (err, lowp_err)
    assert (mass - ref_m).abs().max().item() < 2e-3
    assert torch.allclose(mass.sum(-1), torch.ones_like(mass[..., 0]), atol=1e-3)


def test_dense_layout_equals_sdpa_causal():
    q, k, v = _qkv(1, 8, 2, 8192, 8192, 128, torch.bfloat16, seed=3)
    lay = BlockLayout.dense_causal(1, 8, 8192, 8192, 128, DEV)
    o = block_sparse_attention(q, k, v, lay)
    want32 = F.scaled_dot_product_attention(q.float(), ref.expand_kv(k, 8).float(),
                                            ref.expand_kv(v, 8).float(), is_causal=True)
    lowp = F.scaled_dot_product_attention(q, ref.expand_kv(k, 8), ref.expand_kv(v, 8), is_causal=True)
    lowp_err = (lowp.float() - want32).abs().max().item()
    assert (o.float() - want32).abs().max().item() <= 2 * lowp_err + 1e-3
    m = block_mass_map(q, k, lay)
    assert torch.allclose(m.sum(-1), torch.ones(1, 8, 64, device=DEV), atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("nq,nk,bs,d", [(16384, 16384, 128, 128), (1000, 3000, 64, 64)])
def test_estimation_kernels(dtype, nq, nk, bs, d):
    q, k, _ = _qkv(1, 8, 2, nq, nk, d, dtype, seed=nq)
    vert, slash = est.last_block_profiles(q, k, bs)
    rv, rs = ref.last_block_profiles_ref(q.float(), k.float(), bs)
    assert (vert - rv).abs().max().item() < 2e-3 and (slash - rs).abs().max().item() < 2e-3
    blk = est.pooled_block_estimate(q, k, bs)
    assert (blk - ref.pooled_block_estimate_ref(q, k, bs)).abs().max().item() < 1e-4
    col = est.probe_column_estimate(q, k, bs)
    assert (col - ref.probe_column_estimate_ref(q, k, bs)).abs().max().item() < 1e-4
    assert torch.allclose(est.pool_blocks_mean(k, bs), ref.pool_blocks_mean_ref(k, bs), atol=1e-5)


def _mass_case(case, seed: int):
    """bf16 q, k, v, a random layout and a random half of the heads (head 0 among them) for ``case``."""
    b, h, hkv, nq, nk, d, bs, density = case
    q, k, v = _qkv(b, h, hkv, nq, nk, d, torch.bfloat16, seed=nq + seed)
    lay = _layout(b, h, nq, nk, bs, density, seed=nk + seed)
    wanted = torch.rand(b, h, device=DEV, generator=torch.Generator(device=DEV).manual_seed(nq + seed - 1)) < 0.5
    wanted[0, 0] = True
    return q, k, v, lay, wanted


@pytest.mark.parametrize("cols", [4, 8])
@pytest.mark.parametrize("case", CASES)
def test_two_pass_map_gathering_tiles_agrees(case, cols, monkeypatch):
    """``MASS_COLS`` (several tiles' row sums reduced at once) gives the tile-by-tile map, up to the
    order of the atomic adds."""
    from sharedattn.kernels import mass_pass

    q, k, v, lay, wanted = _mass_case(case, 3)
    _, base = block_sparse_attention(q, k, v, lay, return_block_mass=True, mass_heads=wanted, mass_pass="two")
    monkeypatch.setattr(mass_pass, "MASS_COLS", cols)
    _, gathered = block_sparse_attention(q, k, v, lay, return_block_mass=True, mass_heads=wanted, mass_pass="two")
    assert (gathered - base).abs().max().item() < 1e-5 and bool((gathered[~wanted] == 0).all())


@pytest.mark.parametrize("case", CASES)
def test_one_pass_and_two_pass_mass_agree(case):
    """The forward pass's own map (tile row sums) equals the second-pass map, for a head subset."""
    q, k, v, lay, wanted = _mass_case(case, 1)
    o1, m1 = block_sparse_attention(q, k, v, lay, return_block_mass=True, mass_heads=wanted, mass_pass="one")
    o2, m2 = block_sparse_attention(q, k, v, lay, return_block_mass=True, mass_heads=wanted, mass_pass="two")
    assert (o1.float() - o2.float()).abs().max().item() <= 1e-2
    assert (m1 - m2).abs().max().item() < 1e-3 and bool((m1[~wanted] == 0).all())
    assert torch.allclose(m1[wanted].sum(-1), torch.ones_like(m1[wanted][..., 0]), atol=1e-3)
