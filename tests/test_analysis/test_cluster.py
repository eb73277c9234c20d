"""Hierarchical clustering, the autoencoder features and the adjusted Rand index."""
import pytest
import torch

from sharedattn.analysis.evaluation.synthetic import SHAPES, synthetic_record
from sharedattn.analysis.offline.autoencoder import AutoencoderConfig, latent_codes, prepare_maps, resize_mass
from sharedattn.analysis.offline.clustering import ClusterConfig, Features, adjusted_rand_index, cluster_heads
from sharedattn.analysis.offline.similarity import SimilarityConfig, mean_similarity, similarity_matrices


def planted(num_layers=3, num_heads=4, seeds=(1, 2)):
    recs = [synthetic_record(num_layers=num_layers, num_heads=num_heads, seed=s) for s in seeds]
    truth = [i % len(SHAPES) for i in range(num_layers * num_heads)]
    return recs, truth


@pytest.mark.parametrize("metric", ["jaccard", "js", "cosine"])
def test_similarity_clustering_recovers_planted_groups(metric):
    recs, truth = planted()
    sim = mean_similarity(similarity_matrices(recs, SimilarityConfig(metric=metric)))
    result = cluster_heads(sim, 4, ClusterConfig(n_clusters=4, min_similarity=0.0))
    assert adjusted_rand_index(result.labels, truth) == pytest.approx(1.0)
    assert all(c.shared and c.size == 3 for c in result.clusters)
    assert result.clusters[0].layers == (0, 1, 2)


def test_threshold_cut_marks_singletons_unshared():
    recs, _ = planted()
    sim = mean_similarity(similarity_matrices(recs, SimilarityConfig(metric="cosine")))
    sim[0, 1:] = sim[1:, 0] = 0.0  # head (0, 0) now unlike any other
    result = cluster_heads(sim, 4, ClusterConfig(distance_threshold=0.3))
    lonely = result.clusters[result.labels[0]]
    assert lonely.size == 1 and not lonely.shared and lonely.mean_similarity is None
    assert result.num_shared_heads == 11


def test_min_similarity_unshares_loose_clusters():
    recs, _ = planted()
    sim = mean_similarity(similarity_matrices(recs, SimilarityConfig(metric="jaccard")))
    result = cluster_heads(sim, 4, ClusterConfig(n_clusters=1, min_similarity=0.99))
    assert len(result.clusters) == 1 and not result.clusters[0].shared


def test_cluster_config_validation():
    with pytest.raises(ValueError, match="exactly one"):
        ClusterConfig(distance_threshold=0.5, n_clusters=3)
    with pytest.raises(ValueError, match="distance_threshold"):
        ClusterConfig(distance_threshold=1.5)
    with pytest.raises(ValueError, match="min_cluster_size"):
        ClusterConfig(min_cluster_size=1)
    with pytest.raises(ValueError, match="ward"):
        ClusterConfig(linkage="ward")
    with pytest.raises(ValueError):
        ClusterConfig(linkage="centroidish")


def test_adjusted_rand_index():
    assert adjusted_rand_index([0, 0, 1, 1], [5, 5, 7, 7]) == 1.0
    assert adjusted_rand_index([0, 0, 0, 0], [0, 0, 0, 0]) == 1.0
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)
    assert abs(adjusted_rand_index([0, 1, 2, 0, 1, 2], [0, 0, 1, 1, 2, 2])) < 0.3


def test_resize_mass_keeps_all_mass():
    maps = torch.rand(3, 13, 13).tril()
    for size in (8, 32):
        small = resize_mass(maps, size)
        assert small.shape == (3, size, size)
        assert torch.allclose(small.sum(dim=(-2, -1)), maps.sum(dim=(-2, -1)), rtol=1e-5)
    x = prepare_maps(torch.zeros(2, 5, 5), 8)
    assert torch.isfinite(x).all() and x.shape == (2, 1, 8, 8)


def test_autoencoder_route_recovers_planted_groups_and_is_seeded():
    recs, truth = planted(seeds=(1,))
    cfg = AutoencoderConfig(grid=16, latent_dim=8, epochs=60, batch_size=16)
    codes, result = latent_codes(recs, cfg)
    assert codes.shape == (12, 8) and result.losses[-1] < result.losses[0]
    codes2, _ = latent_codes(recs, cfg)
    assert torch.allclose(codes, codes2)
    sim = mean_similarity(similarity_matrices(recs, SimilarityConfig(metric="cosine")))
    cc = ClusterConfig(features=Features.AUTOENCODER, linkage="ward", n_clusters=4, min_similarity=0.0)
    clustering = cluster_heads(sim, 4, cc, codes=codes)
    assert adjusted_rand_index(clustering.labels, truth) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="latent code"):
        cluster_heads(sim, 4, cc)
