"""The flash backend's block-mass map on CPU: log-sum-exp -> row statistics -> the mass pass.

flash-attn-4 returns each row's log-sum-exp, not the map; ``mass_pass.stats_from_lse`` turns it into
the statistics of the Triton mass pass. Here the log-sum-exp comes from its twin
(``reference.sparse_lse_ref``), the pass runs as its twin and as the interpreted kernel, and the
dispatcher's routing runs with a stand-in for the flash call, or, in direct mode, for flash-attn-4's
interface (``_helpers.FakeFlashAttn4``). tests/test_gpu/test_flash_gpu.py runs the real thing.
"""
import math

import pytest
import torch

from sharedattn import kernels
from sharedattn.kernels import backend as kb
from sharedattn.kernels import flash
from sharedattn.kernels import reference as ref
from sharedattn.kernels.attn_fwd import AttnConfig, mass_config
from sharedattn.kernels.layout import BlockLayout
from sharedattn.kernels.mass_pass import LOG2E, launch_block_mass, stats_from_lse

from ._helpers import FakeFlashAttn4, make_qkv, random_layout, recorded_compiles

CASES = [  # (b, h, hkv, nq, nk, d, bs, density, seed)
    (1, 4, 2, 200, 200, 32, 64, 0.5, 1),  # GQA, ragged last block
    (2, 4, 1, 130, 200, 32, 64, 0.6, 2),  # batch 2, one KV head, queries shorter than keys
    (1, 2, 2, 256, 256, 64, 128, 0.4, 3),  # block 128, head dim 64
]


def _case(b, h, hkv, nq, nk, d, bs, density, seed):
    """Inputs and a layout in which head (0, 1) keeps nothing in query block 1 (rows that see no key)."""
    q, k, v = make_qkv(b, h, hkv, nq, nk, d, torch.float32, seed=seed)
    dense = random_layout(b, h, nq, nk, bs, density, seed=seed).to_dense()
    dense[0, 1, 1] = False
    return q, k, v, BlockLayout.from_dense(dense, bs, nq, nk)


def _wanted(b, h):
    wanted = torch.zeros(b, h, dtype=torch.bool)
    wanted[0, 1] = wanted[0, h - 1] = True  # the head with empty rows and one more
    wanted[-1, 0] = True
    return wanted


def _check_map(mass, want, wanted, empty_rows=True):
    sel = torch.ones(mass.shape[:2], dtype=torch.bool) if wanted is None else wanted
    assert mass.dtype == torch.float32 and mass.shape == want.shape and not torch.isnan(mass).any()
    assert (mass[sel] - want[sel]).abs().max().item() <= 1e-4
    assert bool((mass[~sel] == 0).all())
    if empty_rows:  # head (0, 1), query block 1: nothing kept, nothing in the map
        assert bool((mass[0, 1, 1] == 0).all())


def test_stats_from_lse():
    lse = torch.tensor([[[0.5, float("-inf"), float("inf"), float("nan"), -3.0]]])
    stats = stats_from_lse(lse)
    assert stats.shape == (1, 1, 2, 5) and stats.dtype == torch.float32 and stats.is_contiguous()
    assert torch.equal(stats[0, 0, 1], torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0]))
    assert torch.allclose(stats[0, 0, 0, [0, 4]], torch.tensor([0.5, -3.0]) * LOG2E)
    assert bool((stats[0, 0, 0, 1:4] == float("-inf")).all())


@pytest.mark.parametrize("case", CASES)
def test_lse_twin_and_stats_give_the_twins_map(case):
    """logsumexp of the masked scaled logits -> statistics -> the mass pass's twin equals the map of
    ``block_sparse_attention_ref``; rows that see nothing get -inf and add nothing."""
    q, k, v, lay = _case(*case)
    dense, bs, scale = lay.to_dense(), lay.block_size, 0.3
    lse = ref.sparse_lse_ref(q, k, dense, bs, scale)
    assert lse.shape == q.shape[:3] and bool((lse[0, 1, bs:2 * bs] == float("-inf")).all())
    assert torch.isfinite(lse[0, 0]).all()
    _, want = ref.block_sparse_attention_ref(q, k, v, dense, bs, scale, return_block_mass=True)
    stats = stats_from_lse(lse)
    for wanted in (None, _wanted(*q.shape[:2])):
        mass = ref.block_mass_from_stats_ref(q, k, stats, dense, bs, scale, wanted)
        _check_map(mass, want, wanted)
    # the twin also reads the forward kernel's own statistics (row max, row sum) the same way
    logits = ref._sparse_logits(q, k, dense, bs, scale) * LOG2E
    m = logits.amax(-1)
    l = torch.exp2(logits - torch.where(torch.isfinite(m), m, 0.0)[..., None]).sum(-1)
    mass = ref.block_mass_from_stats_ref(q, k, torch.stack([m, l], 2), dense, bs, scale)
    _check_map(mass, want, None)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("tiles", [None, (32, 16)])
def test_mass_kernel_from_lse(case, tiles):
    """The interpreted Triton mass pass fed ``stats_from_lse`` of the twin's lse: the twin's map,
    for every head and for a subset (the others zero), with whole-block and sub-block tiles."""
    q, k, v, lay = _case(*case)
    dense, bs, scale = lay.to_dense(), lay.block_size, 0.3
    stats = stats_from_lse(ref.sparse_lse_ref(q, k, dense, bs, scale))
    _, want = ref.block_sparse_attention_ref(q, k, v, dense, bs, scale, return_block_mass=True)
    cfg = mass_config(bs, q.shape[-1], False) if tiles is None else AttnConfig(*tiles)
    for wanted in (None, _wanted(*q.shape[:2])):
        mass = launch_block_mass(q, k, stats, lay, scale * LOG2E, cfg, wanted)
        _check_map(mass, want, wanted)
        assert torch.allclose(mass, ref.block_mass_from_stats_ref(q, k, stats, dense, bs, scale, wanted),
                              atol=1e-5)


# ---- the dispatcher, with a stand-in for flash-attn-4 ---------------------------------------------
@pytest.fixture
def fake_flash(monkeypatch):
    """flash "runs" here: its call returns the twin's output and log-sum-exp (the calls are logged)."""
    calls = []

    def fake(q, k, v, layout, *, scale=None, return_lse=False):
        calls.append(return_lse)
        dense = layout.to_dense()
        out = ref.block_sparse_attention_ref(q, k, v, dense, layout.block_size, scale).to(q.dtype)
        return (out, ref.sparse_lse_ref(q, k, dense, layout.block_size, scale)) if return_lse else out

    monkeypatch.setattr(kb, "flash_unavailable", lambda device=None: None)
    monkeypatch.setattr(flash, "flash_unavailable", lambda device=None: None)
    monkeypatch.setattr(flash, "call_unsupported", lambda q, layout: None)  # fp32 on CPU
    monkeypatch.setattr(flash, "flash_sparse_attention", fake)
    return calls


@pytest.mark.parametrize("with_heads", [False, True])
def test_flash_asked_for_with_a_map_runs_the_two_passes(fake_flash, with_heads):
    """``flash`` with ``return_block_mass``: flash with lse, then the mass pass (interpreted here) for
    the mapped heads; counted once, as flash."""
    q, k, v, lay = _case(*CASES[0])
    wanted = _wanted(*q.shape[:2]) if with_heads else None
    with kernels.use_backend("flash"), kernels.record_backends() as ran:
        assert kb.attention_backend(q, lay, return_block_mass=True) is kb.Backend.FLASH
        out, mass = kernels.sparse_attention(q, k, v, lay, scale=0.3, return_block_mass=True, mass_heads=wanted)
    assert dict(ran) == {"flash": 1} and fake_flash == [True]
    want_out, want = ref.block_sparse_attention_ref(q, k, v, lay.to_dense(), lay.block_size, 0.3, True)
    assert out.dtype == q.dtype and (out - want_out).abs().max().item() <= 1e-5
    _check_map(mass, want, wanted)
    with kernels.use_backend("flash"), kernels.record_backends() as ran:  # without the map: one call, no lse
        kernels.sparse_attention(q, k, v, lay, scale=0.3)
    assert dict(ran) == {"flash": 1} and fake_flash == [True, False]
    with kernels.use_backend("flash"), pytest.raises(ValueError, match="mass_heads"):
        kernels.sparse_attention(q, k, v, lay, return_block_mass=True, mass_heads=torch.ones(1, 2, dtype=torch.bool))


@pytest.mark.parametrize("case", [c for c in CASES if c[3] == c[4]])  # chunked prefill: never on flash
@pytest.mark.parametrize("with_heads", [False, True])
def test_direct_call_makes_the_map(monkeypatch, case, with_heads):
    """Direct mode end to end with a stand-in for flash-attn-4 (which writes +inf for rows that see no
    key): ``flash`` with the map is one flash call with the log-sum-exp, then the mass pass; the twin's
    output and map, rows that see nothing included; without the map, one call without it."""
    monkeypatch.setattr(flash, "COMPILE", "direct")
    fake = FakeFlashAttn4().install(monkeypatch)
    monkeypatch.setattr(kb, "flash_unavailable", lambda device=None: None)
    monkeypatch.setattr(flash, "call_unsupported", lambda q, layout: None)  # fp32 on CPU
    q, k, v, lay = _case(*case)
    wanted = _wanted(*q.shape[:2]) if with_heads else None
    with kernels.use_backend("flash"), kernels.record_backends() as ran:
        out, mass = kernels.sparse_attention(q, k, v, lay, scale=0.3, return_block_mass=True, mass_heads=wanted)
        plain = kernels.sparse_attention(q, k, v, lay, scale=0.3)
    assert dict(ran) == {"flash": 2} and [call["return_lse"] for call in fake.calls] == [True, False]
    want_out, want = ref.block_sparse_attention_ref(q, k, v, lay.to_dense(), lay.block_size, 0.3, True)
    for got in (out, plain):
        assert got.shape == q.shape and got.dtype == q.dtype and (got - want_out).abs().max().item() <= 1e-5
    _check_map(mass, want, wanted)


def test_auto_with_a_map_follows_the_rule_and_the_mapped_share(fake_flash):
    """``auto`` sends a map-asking call to flash only where it sends the same call without the map
    and few enough heads are mapped (``FLASH_MASS_MAX_SHARE`` per head dim; a share not known counts
    as every head); else Triton, whose forward makes the map."""
    n = kb.AUTO_FLASH_MIN_KEYS[128]
    q = torch.empty(1, 32, n, 128, dtype=torch.bfloat16, device="meta")
    lay = BlockLayout.dense_causal(1, 1, 256, 256, 128, torch.device("cpu"))
    object.__setattr__(lay, "nk", n)  # the rule reads the geometry only
    object.__setattr__(lay, "nq", n)
    short = kb.Geometry(8192, 8192, 128)
    limit = kb.FLASH_MASS_MAX_SHARE[128]
    assert kb.auto_backend(q, lay) is kb.auto_backend(q, lay, True, limit) is kb.Backend.FLASH
    assert kb.auto_backend(q, lay, True) is kb.auto_backend(q, lay, True, min(1.0, 2 * limit)) is kb.Backend.TRITON
    assert kb.auto_backend(q, short, True, 0.0) is kb.auto_backend(q, short) is kb.Backend.TRITON
    q64 = torch.empty(1, 14, kb.AUTO_FLASH_MIN_KEYS[64], 64, dtype=torch.bfloat16, device="meta")
    long64 = kb.Geometry(q64.shape[2], q64.shape[2], 128)
    if kb.FLASH_MASS_MAX_SHARE[64] >= 1.0:  # two passes on both backends: flash at any share
        assert kb.auto_backend(q64, long64, True) is kb.Backend.FLASH


def test_sparse_attention_passes_the_mapped_share(monkeypatch):
    """The dispatcher hands the rule the share of mapped heads: all without ``mass_heads``, the
    caller's count over the heads with it, unknown without a count; and the caller's kept share."""
    seen = []
    monkeypatch.setattr(kb, "attention_backend", lambda q, lay, rbm=False, share=None, kept=None: seen.append(share)
                        or kept_seen.append(kept) or kb.Backend.REFERENCE)
    kept_seen = []
    q, k, v = (torch.randn(1, 4, 128, 32) for _ in range(3))
    lay = BlockLayout.dense_causal(1, 4, 128, 128, 64, q.device)
    wanted = torch.tensor([[True, False, False, False]])
    kernels.sparse_attention(q, k, v, lay, return_block_mass=True)
    kernels.sparse_attention(q, k, v, lay, return_block_mass=True, mass_heads=wanted, num_mass_heads=1)
    kernels.sparse_attention(q, k, v, lay, return_block_mass=True, mass_heads=wanted, kept_share=0.5)
    assert seen == [1.0, 0.25, None] and kept_seen == [None, None, 0.5]


# ---- the compiled call's log-sum-exp ---------------------------------------------------------------
@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_compiled_call_returns_the_lse(mode, monkeypatch):
    """Both compiled bodies trace whole; the one with the log-sum-exp returns the twin's and needs its
    own graph: dynamic, one per body for every length; static, one per body and length. On CPU the
    graphs run FlexAttention's math path (mask_mod only: dense layouts, as in test_flash_backend.py),
    which writes log2 statistics where flash-attn-4 writes natural log, and which the wrapper scales
    by ln 2 exactly when it also scales FLASH's: so ``ln 2 * lse_to_natural()`` brings it to natural
    log on every torch, and the check also checks ``lse_to_natural`` on the installed one."""
    lengths = [(256, 256), (320, 320)]
    math_path_scale = math.log(2.0) * flash.lse_to_natural()
    with recorded_compiles(monkeypatch, mode) as (graphs, recording):
        for return_lse in (False, True):
            call = flash._compiled(mode, recording, return_lse=return_lse)
            for nq, nk in lengths:
                q, k, v = make_qkv(1, 4, 2, nq, nk, 64, torch.float32, seed=nq)
                lay = BlockLayout.dense_causal(1, 4, nq, nk, 64, q.device)
                tensors = flash.block_mask_tensors(lay, full_width=lay.num_kv_blocks if mode == "static" else None)
                extra = (math_path_scale,) if return_lse else ()
                with flash._dynamo_settings(mode):
                    res = call(q, k, v, *tensors, None, 64, 0.125, *extra)
                out = res[0] if return_lse else res
                assert (out - ref.attention_ref(q, k, v, 0.125)).abs().max().item() < 1e-5
                if return_lse:
                    want = ref.sparse_lse_ref(q, k, lay.to_dense(), 64, 0.125)
                    assert res[1].shape == (1, 4, nq) and res[1].dtype == torch.float32
                    assert (res[1] - want).abs().max().item() < 1e-4
    assert len(graphs) == (2 if mode == "dynamic" else 2 * len(lengths))


def test_lse_base_follows_the_installed_torch(monkeypatch):
    """torch up to 2.11 multiplied FLASH's natural-log lse by ln 2 (its wrapper's ``lse * ln2``); the
    fixed wrapper (``stats_are_log2``, torch 2.13 here) does not."""
    import inspect

    flash.lse_to_natural.cache_clear()
    try:
        monkeypatch.setattr(inspect, "getsource", lambda fn: "lse_scaled = lse * ln2 if (return_lse ...)")
        assert flash.lse_to_natural() == pytest.approx(1.0 / math.log(2.0))
        flash.lse_to_natural.cache_clear()
        monkeypatch.setattr(inspect, "getsource", lambda fn: "stats_are_log2=kernel_options['BACKEND'] != 'FLASH'")
        assert flash.lse_to_natural() == 1.0
    finally:
        flash.lse_to_natural.cache_clear()
    if torch.__version__ >= (2, 13):
        assert flash.lse_to_natural() == 1.0


def test_lse_of_rows_that_see_nothing_is_minus_inf(monkeypatch):
    """Whatever the kernel writes for a row with no key (flash-attn-2 wrote +inf), -inf comes back;
    the rest is scaled by ``lse_scale``."""
    from torch.nn.attention.flex_attention import AuxOutput

    raw = torch.tensor([[[1.0, float("inf"), float("nan"), float("-inf")]]])
    monkeypatch.setattr(flash, "_flex", lambda *args: (torch.zeros(1, 1, 4, 8), AuxOutput(lse=raw)))
    _, lse = flash._call_lse(*[None] * 10, 2.0)
    assert torch.equal(lse, torch.tensor([[[2.0, float("-inf"), float("-inf"), float("-inf")]]]))
