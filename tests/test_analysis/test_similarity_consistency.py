"""Cross-input consistency on synthetic prompts: groups fixed, patterns varying with the seed."""
import pytest
import torch

from sharedattn.analysis.evaluation.synthetic import synthetic_record
from sharedattn.analysis.offline.consistency import consistency, own_pattern_jaccard, spearman_upper, top_k_overlap
from sharedattn.analysis.offline.similarity import SimilarityConfig, similarity_matrices


def test_spearman_upper_and_constant_inputs():
    a = torch.rand(6, 6)
    a = a + a.T
    assert spearman_upper(a, a) == pytest.approx(1.0)
    assert spearman_upper(a, -a) == pytest.approx(-1.0)
    ones = torch.ones(6, 6)
    assert spearman_upper(ones, ones) == 1.0 and spearman_upper(ones, a) == 0.0


def test_top_k_overlap():
    a = torch.tensor([[1, .9, .1, .0], [.9, 1, .2, .1], [.1, .2, 1, .8], [.0, .1, .8, 1]])
    assert top_k_overlap(a, a, 1).tolist() == [1, 1, 1, 1]
    b = a.clone()
    b[0, 1] = b[1, 0] = 0.0
    b[0, 3] = b[3, 0] = 0.95
    assert top_k_overlap(a, b, 1)[0].item() == 0.0
    with pytest.raises(ValueError, match="top_k"):
        top_k_overlap(a, a, 4)


def test_own_pattern_jaccard_on_common_grid():
    a = torch.ones(2, 4, 4, dtype=torch.bool).tril()
    b = torch.ones(2, 3, 3, dtype=torch.bool).tril()
    b[1] = torch.eye(3, dtype=torch.bool)
    jac = own_pattern_jaccard(a, b)
    assert jac[0].item() == 1.0 and jac[1].item() == pytest.approx(0.5)


def test_patterns_change_similarity_holds():
    recs = [synthetic_record(num_layers=3, num_heads=4, num_tokens=n, seed=s)
            for s, n in ((1, 640), (2, 768), (3, 512))]
    mats = similarity_matrices(recs, SimilarityConfig(metric="jaccard"))
    rep = consistency(recs, mats, top_k=2)
    assert len(rep.pairs) == 3 and rep.pairs[0].common_blocks == 10
    assert rep.mean_top_k_overlap > 0.9 > rep.chance_top_k_overlap
    assert rep.mean_spearman > 0.5
    assert rep.mean_own_jaccard < 0.9
    js = rep.to_json()
    assert len(js["head_own_jaccard"]) == 12


def test_consistency_needs_two_prompts():
    rec = synthetic_record()
    with pytest.raises(ValueError, match="at least 2 prompts"):
        consistency([rec], [torch.eye(16)])
