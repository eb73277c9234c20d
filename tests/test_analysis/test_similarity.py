"""Coverage masks and the three head-similarity metrics on hand-built and synthetic records."""
import math

import pytest
import torch

from sharedattn.analysis.evaluation.synthetic import Shape, synthetic_record
from sharedattn.analysis.files.fingerprint import FormatError
from sharedattn.analysis.files.records import AttentionRecord
from sharedattn.analysis.method.coverage import causal_block_count, common_grid, coverage_mask, density, flatten_causal
from sharedattn.analysis.offline.similarity import (
    Metric,
    SimilarityConfig,
    cosine_from_maps,
    jaccard_from_masks,
    js_distance_matrix,
    similarity_matrices,
    similarity_matrix,
)
from sharedattn.analysis.offline.similarity_report import save_matrix, summarize


def test_coverage_mask_picks_fewest_blocks():
    mass = torch.tensor([[1.0, 0.0, 0.0], [0.7, 0.3, 0.0], [0.5, 0.3, 0.2]])
    mask = coverage_mask(mass, 0.8)
    assert mask.tolist() == [[True, False, False], [True, True, False], [True, True, False]]
    assert coverage_mask(mass, 1.0)[2].tolist() == [True, True, True]


def test_coverage_mask_is_nan_safe_and_empty_for_zero_rows():
    mass = torch.tensor([[0.0, 0.0], [float("nan"), 1.0]])
    mask = coverage_mask(mass, 0.95)
    assert mask.tolist() == [[False, False], [False, True]]


def test_coverage_mask_handles_unnormalised_rows_and_never_keeps_zero_mass():
    mass = torch.tensor([[2.0, 2.0, 0.0, 0.0]])
    assert coverage_mask(mass, 1.0).tolist() == [[True, True, False, False]]


@pytest.mark.parametrize("gamma", [0.0, -0.1, 1.5])
def test_gamma_out_of_range(gamma):
    with pytest.raises(ValueError, match="gamma"):
        coverage_mask(torch.ones(2, 2), gamma)


def test_density_counts_causal_blocks():
    mask = torch.ones(4, 4).tril().bool()
    assert causal_block_count(4) == 10
    assert density(mask).item() == pytest.approx(1.0)
    assert density(torch.eye(4, dtype=torch.bool)).item() == pytest.approx(0.4)


def test_flatten_causal_and_common_grid():
    maps = torch.arange(9.0).reshape(3, 3)
    assert flatten_causal(maps).tolist() == [0.0, 3.0, 4.0, 6.0, 7.0, 8.0]
    a, b = common_grid([torch.ones(2, 5, 5), torch.ones(2, 3, 3)])
    assert a.shape == b.shape == (2, 3, 3)


def test_jaccard_hand_built():
    masks = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    sim = jaccard_from_masks(masks, cell_chunk=3)  # chunking across a ragged boundary
    assert sim[0, 1].item() == pytest.approx(1 / 3)
    assert sim[0, 2].item() == 0.0
    assert sim[2, 3].item() == 1.0  # two empty masks are identical
    assert torch.equal(sim, sim.T) and torch.all(sim.diagonal() == 1)


def test_cosine_hand_built_and_zero_maps():
    maps = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    sim = cosine_from_maps(maps)
    assert sim[0, 1].item() == pytest.approx(1 / math.sqrt(2), abs=1e-6)
    assert sim[0, 2].item() == 0.0 and sim[2, 3].item() == 1.0


def test_js_distance_known_values():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [0.0, 0.0]])
    d = js_distance_matrix(p)
    assert d[0, 1].item() == pytest.approx(1.0, abs=1e-4)  # disjoint: JS = 1 bit
    assert d[0, 2].item() == pytest.approx(0.0, abs=1e-6)
    # JS([1,0], [.5,.5]) = H(.75,.25) - H(.5,.5)/2 = 0.811278 - 0.5
    assert d[0, 3].item() == pytest.approx(math.sqrt(0.311278), abs=1e-4)
    assert torch.isfinite(d).all()  # the all-zero profile (row 4) is uniform after the epsilon


def test_js_chunking_matches_one_pass():
    p = torch.rand(7, 11)
    assert torch.allclose(js_distance_matrix(p, max_elems=20), js_distance_matrix(p), atol=1e-6)


@pytest.mark.parametrize("metric", list(Metric))
def test_planted_groups_score_higher(metric):
    rec = synthetic_record(num_layers=3, num_heads=4, num_tokens=640, block_size=64, seed=1)
    sim = similarity_matrix(rec, SimilarityConfig(metric=metric))
    groups = torch.arange(12) % 4
    same = (groups[:, None] == groups[None, :]) & ~torch.eye(12, dtype=torch.bool)
    other = groups[:, None] != groups[None, :]
    assert sim[same].min() > sim[other].max()
    assert sim[same].mean() > 0.8
    assert torch.isfinite(sim).all() and torch.equal(sim, sim.T)


@pytest.mark.parametrize("metric", list(Metric))
def test_metrics_nan_safe_on_degenerate_records(metric):
    rec = synthetic_record(num_layers=2, num_heads=2, num_tokens=40, block_size=64)  # one block
    bm = rec.block_mass.clone()
    bm[0, 0] = 0.0  # an all-zero head
    vertical, slash = rec.vertical.clone(), rec.slash.clone()
    vertical[0, 0], slash[0, 0] = 0.0, float("nan")
    rec = AttentionRecord(rec.meta, bm, vertical, slash)
    sim = similarity_matrix(rec, SimilarityConfig(metric=metric))
    assert torch.isfinite(sim).all() and torch.all(sim.diagonal() == 1)
    assert sim.min() >= 0 and sim.max() <= 1


def test_identical_heads_score_one():
    rec = synthetic_record(num_layers=1, num_heads=3, shapes=[Shape.BAND] * 3, noise=0.0)
    for metric in Metric:
        sim = similarity_matrix(rec, SimilarityConfig(metric=metric))
        assert torch.allclose(sim, torch.ones(3, 3), atol=1e-5), metric


def test_mixed_models_and_block_sizes_are_rejected():
    a = synthetic_record(num_layers=2, num_heads=2)
    with pytest.raises(FormatError, match="num_layers"):
        similarity_matrices([a, synthetic_record(num_layers=3, num_heads=2)], SimilarityConfig())
    with pytest.raises(FormatError, match="block sizes"):
        similarity_matrices([a, synthetic_record(num_layers=2, num_heads=2, block_size=32)], SimilarityConfig())


def test_config_validation():
    with pytest.raises(ValueError):
        SimilarityConfig(metric="euclid")
    with pytest.raises(ValueError, match="gamma"):
        SimilarityConfig(gamma=1.2)


def test_summary_and_saved_matrix(tmp_path):
    import numpy as np

    rec = synthetic_record(num_layers=3, num_heads=4, seed=2)
    sim = similarity_matrix(rec, SimilarityConfig(metric="cosine"))
    s = summarize(sim, 3, 4, "cosine", threshold=0.5)
    assert 0 <= s.share_within <= 1 and 0 <= s.share_across <= 1
    assert len(s.partners) == 12 and len(s.layers) == 3
    p0 = s.partners[0]
    assert (p0.partner_layer * 4 + p0.partner_head) % 4 == 0  # same planted shape as head 0
    assert s.layers[0].mean_best >= s.layers[-1].mean_best
    npy, csv_path = save_matrix(sim, tmp_path / "m", 3, 4)
    assert np.allclose(np.load(npy), sim.numpy())
    lines = csv_path.read_text().splitlines()
    assert lines[0].split(",")[:3] == ["head", "L0H0", "L0H1"] and len(lines) == 13
    with pytest.raises(ValueError, match="threshold"):
        summarize(sim, 3, 4, "cosine", threshold=1.5)
