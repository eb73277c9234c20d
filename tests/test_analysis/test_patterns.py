import torch

from sharedattn.analysis.method.patterns import (
    a_shape_mask,
    gamma_budget,
    js_distance,
    top_k_mask,
    vertical_slash_mask,
)
from sharedattn.kernels.reference import (
    always_kept,
    block_mask_to_token_mask,
    causal_block_mask,
    causal_token_mask,
    pool_cols_sum,
    slash_to_blocks,
)


def test_gamma_budget_counts_fewest_entries():
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25]])
    assert gamma_budget(p, 0.8, 1).tolist() == [2, 4]
    assert gamma_budget(p, 0.5, 1).tolist() == [1, 2]
    assert gamma_budget(p, 0.5, 3).tolist() == [3, 3]  # min budget
    assert gamma_budget(torch.tensor([[float("nan"), 1.0, 0.0]]), 0.9, 1).tolist() == [1]
    assert gamma_budget(torch.zeros(1, 4), 0.9, 2).tolist() == [2]  # all-zero: the minimum


def test_top_k_mask_and_ties():
    s = torch.tensor([[0.1, 0.9, 0.5, 0.5]])
    assert top_k_mask(s, torch.tensor([2])).tolist() == [[False, True, True, False]]
    assert top_k_mask(s, torch.tensor([0])).sum() == 0


def test_slash_blocks_cover_every_token_of_the_diagonal():
    """A kept offset block d must keep every (query, key) token pair whose offset falls in it."""
    nq = nk = 300
    bs = 64
    for d in range(num := 5):
        diag = torch.zeros(1, 1, num, dtype=torch.bool)
        diag[..., d] = True
        blocks = slash_to_blocks(diag, nq, nk, bs)
        tokens = block_mask_to_token_mask(blocks, nq, nk, bs)[0, 0]
        offset = torch.arange(nq)[:, None] - torch.arange(nk)[None, :]
        wanted = (offset >= d * bs) & (offset < (d + 1) * bs)
        assert bool(tokens[wanted].all()), d


def test_vertical_slash_mask_keeps_sink_diagonal_and_is_causal():
    nq, nk, bs = 500, 700, 64  # chunked prefill: queries end-aligned
    v = torch.rand(2, 3, 11)
    s = torch.rand(2, 3, 11)
    mask = vertical_slash_mask(v, s, torch.full((2, 3), 2), torch.full((2, 3), 1), nq, nk, bs)
    causal = causal_block_mask(nq, nk, bs, v.device)
    assert not bool((mask & ~causal).any())
    assert bool((mask >= always_kept(nq, nk, bs, v.device)).all())
    assert bool(mask[..., 0].all())
    top = v.argsort(-1, descending=True)[..., :2]  # the two heaviest columns, where causal
    for b in range(2):
        for h in range(3):
            for c in top[b, h].tolist():
                assert bool((mask[b, h, :, c] == causal[:, c]).all())


def test_a_shape_mask():
    m = a_shape_mask(1, 2, 1024, 1024, 64, 64, 256, torch.device("cpu"))
    assert m.shape == (1, 2, 16, 16)
    assert bool(m[0, 0, :, 0].all())
    assert bool(m[0, 0, 15, 12:].all()) and not bool(m[0, 0, 15, 1:12].any())


def test_js_distance_is_nan_safe_and_bounded():
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 0.0], [float("nan"), 1.0]])
    q = torch.tensor([[0.0, 1.0], [0.5, 0.5], [0.0, 0.0], [0.0, 1.0]])
    d = js_distance(p, q)
    assert torch.isfinite(d).all()
    assert abs(float(d[0]) - 1.0) < 1e-3 and float(d[1]) < 1e-4 and float(d[2]) < 1e-4 and float(d[3]) < 1e-4


def test_pooled_profiles_keep_mass():
    x = torch.rand(1, 2, 130)
    assert torch.allclose(pool_cols_sum(x, 64).sum(-1), x.sum(-1))
    assert causal_token_mask(2, 3, torch.device("cpu")).tolist() == [[True, True, False], [True, True, True]]


def test_one_sort_serves_budget_and_top_k():
    """``rank_desc`` + ``budget_of`` give the budget of sorting the cleaned masses (NaN and negative
    entries count as zero) and the stable top-k of the raw scores."""
    from sharedattn.analysis.method.patterns import budget_of, rank_desc, top_k_mask

    torch.manual_seed(5)
    scores = torch.rand(3, 4, 40) ** 3
    scores[0, 0, 5] = float("nan")
    scores[1, 2, :3] = -0.5
    scores[2, 1, 10:14] = 0.25  # ties
    ranked = rank_desc(scores)
    for gamma in (0.5, 0.9, 0.99):
        p = torch.nan_to_num(scores, nan=0.0).clamp_min(0)
        ordered = torch.sort(p, dim=-1, descending=True).values
        want = ((torch.cumsum(ordered, -1) - ordered) < gamma * p.sum(-1, keepdim=True)).sum(-1).clamp(2, 40)
        assert torch.equal(budget_of(ranked, gamma, 2), want)
    counts = torch.randint(0, 41, (3, 4))
    top = top_k_mask(scores, counts)
    assert torch.equal(top.sum(-1), counts)
    assert torch.equal(top, ranked.ranks < counts[..., None])
    kept_min = torch.where(top, torch.nan_to_num(scores, nan=-1.0), float("inf")).amin(-1)
    dropped_max = torch.where(top, float("-inf"), torch.nan_to_num(scores, nan=-1.0)).amax(-1)
    assert bool((kept_min >= dropped_max).all())
