"""Estimation kernels (interpreted Triton) against their twins."""
import pytest
import torch

from sharedattn.kernels import estimate as est
from sharedattn.kernels import reference as ref

from ._helpers import make_qkv

CASES = [  # (b, h, hkv, nq, nk, d, block)
    (1, 2, 2, 256, 256, 64, 64),
    (2, 4, 1, 200, 330, 64, 64),
    (1, 3, 1, 40, 300, 32, 128),  # q shorter than one block
    (1, 2, 1, 384, 384, 128, 128),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_last_block_profiles(case, dtype):
    b, h, hkv, nq, nk, d, bs = case
    q, k, _ = make_qkv(b, h, hkv, nq, nk, d, dtype, seed=nq)
    vert, slash = est.last_block_profiles(q, k, bs)
    rv, rs = ref.last_block_profiles_ref(q.float(), k.float(), bs)
    tol = 1e-6 if dtype == torch.float32 else 2e-4
    assert vert.shape == rv.shape == (b, h, nk)
    assert (vert - rv).abs().max().item() <= tol and (slash - rs).abs().max().item() <= tol
    assert torch.allclose(vert.sum(-1), torch.ones(b, h), atol=1e-4)


@pytest.mark.parametrize("case", CASES)
def test_pooling(case):
    b, h, hkv, nq, nk, d, bs = case
    q, k, _ = make_qkv(b, h, hkv, nq, nk, d, torch.float16, seed=1)
    assert torch.allclose(est.pool_blocks_mean(q, bs), ref.pool_blocks_mean_ref(q, bs), atol=1e-5)
    assert torch.allclose(est.pool_blocks_mean(k, bs), ref.pool_blocks_mean_ref(k, bs), atol=1e-5)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_pooled_estimates(case, dtype):
    b, h, hkv, nq, nk, d, bs = case
    q, k, _ = make_qkv(b, h, hkv, nq, nk, d, dtype, seed=2)
    blk = est.pooled_block_estimate(q, k, bs)
    want = ref.pooled_block_estimate_ref(q, k, bs)
    assert blk.shape == want.shape and (blk - want).abs().max().item() < 1e-5
    col = est.probe_column_estimate(q, k, bs)
    assert (col - ref.probe_column_estimate_ref(q, k, bs)).abs().max().item() < 1e-5
    assert torch.allclose(col.sum(-1), torch.ones(b, h), atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_estimate_of_means_is_the_pooled_estimate(case):
    """From the queries' block means and their count (what a recorded decision step reads instead
    of q), kernel and twin give ``pooled_block_estimate`` of q; means that do not fit are refused."""
    b, h, hkv, nq, nk, d, bs = case
    q, k, _ = make_qkv(b, h, hkv, nq, nk, d, torch.float16, seed=4)
    want = ref.pooled_block_estimate_ref(q, k, bs)
    means = ref.pool_blocks_mean_ref(q, bs)
    assert (est.pooled_estimate_of_means(means, k, nq, bs) - want).abs().max().item() < 1e-5
    assert torch.equal(ref.pooled_estimate_of_means_ref(means, k, nq, bs), want)
    with pytest.raises(ValueError, match="do not fit"):
        est.pooled_estimate_of_means(means, k, nq + bs, bs)


def test_profiles_twin_matches_dense_probs():
    """The twin's vertical profile is the mean of the probe rows of the full attention matrix."""
    q, k, _ = make_qkv(1, 2, 1, 100, 150, 32, torch.float32, seed=3)
    probs = ref.attention_probs_ref(q, k)  # [1, 2, 100, 150]
    vert, slash = ref.last_block_profiles_ref(q, k, 64)
    assert torch.allclose(vert, probs[:, :, -64:].mean(2), atol=1e-6)
    assert torch.allclose(slash.sum(-1), torch.ones(1, 2), atol=1e-5)


@pytest.mark.parametrize("b,h,hkv,nq,nk,bs", [(1, 2, 1, 256, 256, 64), (2, 4, 2, 200, 330, 32),
                                              (1, 2, 2, 40, 300, 64), (1, 2, 1, 300, 300, 128),
                                              (1, 2, 1, 70, 70, 16)])
def test_pooled_profiles_without_workspace_match_twin(b, h, hkv, nq, nk, bs):
    """The probe profiles reduced per key tile equal the pooled twin (and the pooled workspace path)."""
    from sharedattn.kernels.estimate import last_block_pooled_profiles, last_block_profiles
    from sharedattn.kernels.reference import last_block_pooled_profiles_ref, pool_cols_sum

    q, k, _ = make_qkv(b, h, hkv, nq, nk, 32, torch.float32, seed=nq + nk)
    v_got, s_got = last_block_pooled_profiles(q, k, bs)
    v_want, s_want = last_block_pooled_profiles_ref(q, k, bs)
    assert v_got.shape == v_want.shape == s_got.shape
    assert (v_got - v_want).abs().max().item() < 1e-5 and (s_got - s_want).abs().max().item() < 1e-5
    vert, slash = last_block_profiles(q, k, bs)
    assert (pool_cols_sum(slash, bs) - s_got).abs().max().item() < 1e-5
    assert (pool_cols_sum(vert, bs) - v_got).abs().max().item() < 1e-5
    assert torch.allclose(s_got.sum(-1), torch.ones(b, h), atol=1e-5)
