"""block_sparse_attention (interpreted Triton) against its twin, and the twin against SDPA."""
import pytest
import torch
import torch.nn.functional as F

from sharedattn.kernels import reference as ref
from sharedattn.kernels.block_sparse import AttnConfig, block_mass_map, block_sparse_attention
from sharedattn.kernels.layout import BlockLayout

from ._helpers import make_qkv, poisoned, random_layout, tolerance


def _check(q, k, v, lay, config=None, mass=True):
    """Kernel vs fp32 twin with a poisoned output; tolerance calibrated on torch in q's dtype."""
    out = poisoned(q.shape, q.dtype)
    res = block_sparse_attention(q, k, v, lay, return_block_mass=mass, out=out, config=config)
    o, m = res if mass else (res, None)
    assert o is out and not torch.isnan(o).any()
    dense = lay.to_dense()
    ref_o, ref_m = ref.block_sparse_attention_ref(q.float(), k.float(), v.float(), dense,
                                                   lay.block_size, return_block_mass=True)
    lp = ref.block_sparse_attention_ref(q, k, v, dense, lay.block_size).to(q.dtype)
    if q.dtype == torch.float32:
        tol = 1e-4
    else:  # torch's own half-precision error: inputs rounded, output rounded
        tol = tolerance(o, ref_o, lp, abs_tol=2e-3)
    assert (o.float() - ref_o).abs().max().item() <= tol
    if mass:
        mass_tol = 1e-4 if q.dtype == torch.float32 else 5e-3
        assert (m - ref_m).abs().max().item() <= mass_tol
    return o


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("density", [0.1, 0.4, 0.8])
def test_random_layouts(dtype, density):
    q, k, v = make_qkv(1, 2, 2, 256, 256, 64, dtype, seed=int(density * 10))
    _check(q, k, v, random_layout(1, 2, 256, 256, 64, density, seed=3))


@pytest.mark.parametrize("group", [1, 3, 4])
def test_gqa_groups(group):
    q, k, v = make_qkv(1, group, 1, 192, 192, 64, torch.float32, seed=group)
    _check(q, k, v, random_layout(1, group, 192, 192, 64, 0.5, seed=group))


def test_batch2_ragged_q_shorter_than_k():
    q, k, v = make_qkv(2, 4, 2, 200, 330, 64, torch.float16, seed=7)
    _check(q, k, v, random_layout(2, 4, 200, 330, 64, 0.5, seed=7))


@pytest.mark.parametrize("bs,d", [(64, 128), (128, 64)])
def test_block_and_head_sizes(bs, d):
    q, k, v = make_qkv(1, 2, 1, 300, 300, d, torch.float32, seed=bs)
    _check(q, k, v, random_layout(1, 2, 300, 300, bs, 0.6, seed=bs))


def test_sub_tiles():
    """BLOCK_M and BLOCK_N smaller than the layout block (the GPU configurations' paths)."""
    q, k, v = make_qkv(1, 2, 1, 200, 264, 32, torch.float32, seed=5)
    _check(q, k, v, random_layout(1, 2, 200, 264, 64, 0.5, seed=5), config=AttnConfig(32, 16))


def test_diagonal_only_rows():
    q, k, v = make_qkv(1, 2, 2, 256, 256, 64, torch.float32, seed=11)
    eye = torch.eye(4, dtype=torch.bool).expand(1, 2, 4, 4)
    lay = BlockLayout.from_dense(eye, 64)
    o = _check(q, k, v, lay)
    # row blocks see only themselves: equal to per-block causal attention
    qb = q.reshape(1, 2, 4, 64, 64).transpose(1, 2).reshape(4, 2, 64, 64)
    kb = k.reshape(1, 2, 4, 64, 64).transpose(1, 2).reshape(4, 2, 64, 64)
    vb = v.reshape(1, 2, 4, 64, 64).transpose(1, 2).reshape(4, 2, 64, 64)
    want = F.scaled_dot_product_attention(qb, kb, vb, is_causal=True)
    assert torch.allclose(o, want.reshape(1, 4, 2, 64, 64).transpose(1, 2).reshape(1, 2, 256, 64),
                          atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_full_density_equals_dense_causal(dtype):
    q, k, v = make_qkv(1, 4, 2, 160, 288, 64, dtype, seed=2)
    lay = BlockLayout.dense_causal(1, 4, 160, 288, 64, q.device)
    o, m = block_sparse_attention(q, k, v, lay, return_block_mass=True)
    dense = ref.attention_ref(q.float(), k.float(), v.float())
    tol = 1e-4 if dtype == torch.float32 else 5e-3
    assert (o.float() - dense).abs().max().item() <= tol
    assert (m - ref.block_mass_ref(q.float(), k.float(), 64)).abs().max().item() <= 1e-3
    assert torch.allclose(m.sum(-1), torch.ones(1, 4, 3), atol=1e-4)
    assert torch.allclose(block_mass_map(q, k, lay), m, atol=1e-5)


def test_twin_equals_sdpa_with_explicit_mask():
    q, k, v = make_qkv(2, 4, 2, 200, 330, 64, torch.float32, seed=9)
    lay = random_layout(2, 4, 200, 330, 64, 0.4, seed=9)
    got = ref.block_sparse_attention_ref(q, k, v, lay.to_dense(), 64)
    tok = ref.block_mask_to_token_mask(lay.to_dense(), 200, 330, 64)
    tok = tok & ref.causal_token_mask(200, 330, q.device)
    want = F.scaled_dot_product_attention(q, ref.expand_kv(k, 4), ref.expand_kv(v, 4), attn_mask=tok)
    assert torch.allclose(got, want, atol=1e-5)


def test_bf16_is_upcast_in_interpreter():
    q, k, v = make_qkv(1, 2, 1, 128, 128, 64, torch.bfloat16, seed=4)
    lay = BlockLayout.dense_causal(1, 2, 128, 128, 64, q.device)
    o = block_sparse_attention(q, k, v, lay)
    assert o.dtype == torch.bfloat16
    assert (o.float() - ref.attention_ref(q, k, v)).abs().max().item() < 2e-2


def test_launcher_rejects_bad_inputs():
    q, k, v = make_qkv(1, 3, 2, 64, 64, 64, torch.float32)
    lay = BlockLayout.dense_causal(1, 3, 64, 64, 64, q.device)
    with pytest.raises(ValueError):
        block_sparse_attention(q, k, v, lay)  # 3 heads over 2 KV heads
    q, k, v = make_qkv(1, 2, 1, 64, 64, 48, torch.float32)
    with pytest.raises(ValueError):
        block_sparse_attention(q, k, v, BlockLayout.dense_causal(1, 2, 64, 64, 64, q.device))


@pytest.mark.parametrize("tma,order", [(True, "heads"), (False, "kv"), (True, "kv")])
def test_tma_loads_and_program_orders(tma, order):
    """TMA descriptor loads (zeros past Nk) and the KV-major program order give the same result."""
    q, k, v = make_qkv(2, 6, 2, 200, 330, 64, torch.float32, seed=13)
    _check(q, k, v, random_layout(2, 6, 200, 330, 64, 0.5, seed=13),
           config=AttnConfig(64, 32, tma=tma, order=order))


def test_tma_falls_back_for_unaligned_views():
    """A K/V view whose strides TMA cannot describe still runs (pointer loads)."""
    q, k, v = make_qkv(1, 2, 1, 128, 128, 64, torch.float32, seed=17)
    k_odd = torch.cat([k, torch.zeros_like(k[..., :1])], dim=-1)[..., :64]  # row stride 65
    _check(q, k_odd, v, random_layout(1, 2, 128, 128, 64, 0.7, seed=17),
           config=AttnConfig(64, 64, tma=True))


def test_unknown_program_order_rejected():
    with pytest.raises(ValueError, match="order"):
        AttnConfig(64, 64, order="rows")


def test_mass_only_for_the_heads_that_ask():
    """mass_heads: the selected heads' maps equal the twin's, the others are zero; out unchanged."""
    q, k, v = make_qkv(2, 4, 2, 192, 256, 32, torch.float32, seed=19)
    lay = random_layout(2, 4, 192, 256, 64, 0.6, seed=19)
    wanted = torch.tensor([[True, False, False, True], [False, True, False, False]])
    o, m = block_sparse_attention(q, k, v, lay, return_block_mass=True, mass_heads=wanted)
    ref_o, ref_m = ref.block_sparse_attention_ref(q, k, v, lay.to_dense(), 64, return_block_mass=True)
    assert (o - ref_o).abs().max().item() <= 1e-4
    assert (m[wanted] - ref_m[wanted]).abs().max().item() <= 1e-4
    assert bool((m[~wanted] == 0).all()) and bool((ref_m[~wanted] > 0).any())
    with pytest.raises(ValueError, match="mass_heads"):
        block_sparse_attention(q, k, v, lay, return_block_mass=True, mass_heads=wanted[:, :2])


@pytest.mark.parametrize("mass_pass", ["one", "two"])
@pytest.mark.parametrize("config", [None, AttnConfig(32, 16)])
def test_mass_one_pass_and_two_pass_agree_with_twin(mass_pass, config):
    """Both ways of making the map, ragged rows, q shorter than k, sub-tiles, a subset of heads."""
    q, k, v = make_qkv(2, 4, 2, 200, 330, 32, torch.float32, seed=23)
    lay = random_layout(2, 4, 200, 330, 64, 0.5, seed=23)
    wanted = torch.tensor([[True, True, False, True], [False, True, True, False]])
    _, ref_m = ref.block_sparse_attention_ref(q, k, v, lay.to_dense(), 64, return_block_mass=True)
    for heads in (None, wanted):
        o, m = block_sparse_attention(q, k, v, lay, return_block_mass=True, mass_heads=heads,
                                      config=config, mass_pass=mass_pass)
        sel = torch.ones_like(wanted) if heads is None else wanted
        assert (m[sel] - ref_m[sel]).abs().max().item() <= 1e-4
        assert bool((m[~sel] == 0).all()) and not torch.isnan(m).any()
    with pytest.raises(ValueError, match="mass_pass"):
        block_sparse_attention(q, k, v, lay, return_block_mass=True, mass_pass="three")


@pytest.mark.parametrize("split", [3, 16])
def test_two_pass_map_split_along_rows(split, monkeypatch):
    """With ``MASS_SPLIT`` the two-pass map's programs each take that many kept tiles of a row:
    long dense rows (40 tiles: block 64, tiles of 16, 640 keys) cut in shares that do not divide
    them, a subset of heads, q shorter than k: the twin's map, as without the split."""
    from sharedattn.kernels import mass_pass

    q, k, v = make_qkv(1, 4, 2, 128, 640, 32, torch.float32, seed=31)
    lay = BlockLayout.dense_causal(1, 4, 128, 640, 64, q.device)
    wanted = torch.tensor([[True, False, True, True]])
    _, ref_m = ref.block_sparse_attention_ref(q, k, v, lay.to_dense(), 64, return_block_mass=True)
    maps = []
    for value in (0, split):
        monkeypatch.setattr(mass_pass, "MASS_SPLIT", value)
        maps.append(block_sparse_attention(q, k, v, lay, return_block_mass=True, mass_heads=wanted,
                                           config=AttnConfig(16, 16), mass_pass="two")[1])
    for m in maps:
        assert (m[wanted] - ref_m[wanted]).abs().max().item() <= 1e-4
        assert bool((m[~wanted] == 0).all())


@pytest.mark.parametrize("cols,split", [(2, 0), (8, 0), (4, 6)])
def test_two_pass_map_gathers_tiles(cols, split, monkeypatch):
    """With ``MASS_COLS`` a program reduces several kept tiles' row sums at once (one vector of
    atomic adds): rows whose tile count is no multiple of it, sub-tiles of one block among them
    (block 64, tiles of 16), with and without the row split, a random layout, a subset of heads,
    q shorter than k: the twin's map, as tile by tile."""
    from sharedattn.kernels import mass_pass

    q, k, v = make_qkv(1, 4, 2, 192, 448, 32, torch.float32, seed=41)
    lay = random_layout(1, 4, 192, 448, 64, 0.6, seed=41)
    wanted = torch.tensor([[True, True, False, True]])
    _, ref_m = ref.block_sparse_attention_ref(q, k, v, lay.to_dense(), 64, return_block_mass=True)
    monkeypatch.setattr(mass_pass, "MASS_COLS", cols)
    monkeypatch.setattr(mass_pass, "MASS_SPLIT", split)
    m = block_sparse_attention(q, k, v, lay, return_block_mass=True, mass_heads=wanted,
                               config=AttnConfig(16, 16), mass_pass="two")[1]
    assert (m[wanted] - ref_m[wanted]).abs().max().item() <= 1e-4
    assert bool((m[~wanted] == 0).all())
    monkeypatch.setattr(mass_pass, "MASS_COLS", 3)
    with pytest.raises(ValueError, match="power of two"):
        block_sparse_attention(q, k, v, lay, return_block_mass=True, mass_heads=wanted, mass_pass="two")


def test_mass_heads_count_hint_and_auto_rule(monkeypatch):
    """``num_mass_heads`` (the caller's count, no host sync) gives the same map as counting here;
    ``auto`` takes one pass only when a kept block is one key tile."""
    from sharedattn.kernels import block_sparse as bsa

    q, k, v = make_qkv(1, 4, 2, 192, 192, 32, torch.float32, seed=29)
    lay = random_layout(1, 4, 192, 192, 64, 0.6, seed=29)
    wanted = torch.tensor([[False, True, False, True]])
    _, counted = block_sparse_attention(q, k, v, lay, return_block_mass=True, mass_heads=wanted, mass_pass="one")
    _, hinted = block_sparse_attention(q, k, v, lay, return_block_mass=True, mass_heads=wanted, mass_pass="one",
                                       num_mass_heads=2)
    assert torch.equal(counted, hinted)
    chosen = []
    real = bsa.mass_from_tile_lse
    monkeypatch.setattr(bsa, "mass_from_tile_lse", lambda *a, **kw: chosen.append("one") or real(*a, **kw))
    for config in (AttnConfig(64, 64), AttnConfig(64, 32)):
        block_sparse_attention(q, k, v, lay, return_block_mass=True, mass_heads=wanted, config=config)
    assert chosen == ["one"]  # the sub-tiled launch (block 64, tiles of 32) made two passes


def test_gathered_tiles_fit_in_shared_memory(monkeypatch):
    """``MASS_COLS`` is halved until the gathered key tiles fit in ``MASS_COLS_BYTES`` (the sizes the
    H200 compiled and refused: 4 bf16 tiles of 64 x 128 fit, 4 of 128 x 128 do not)."""
    from sharedattn.kernels import mass_pass

    monkeypatch.setattr(mass_pass, "MASS_COLS", 8)
    assert mass_pass.gathered_tiles(64, 128, 2) == 4
    assert mass_pass.gathered_tiles(128, 128, 2) == 2
    assert mass_pass.gathered_tiles(64, 64, 2) == 8
    assert mass_pass.gathered_tiles(128, 128, 4) == 1
    monkeypatch.setattr(mass_pass, "MASS_COLS", 1)
    assert mass_pass.gathered_tiles(64, 64, 2) == 1
