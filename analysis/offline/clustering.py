"""Offline clustering of heads into the groups that SharePrefill's lookup shares patterns within.

Two feature routes (``Features``):

* ``similarity``: hierarchical clustering on ``1 - mean similarity`` over the calibration prompts;
* ``autoencoder``: hierarchical clustering on the Euclidean distance between the heads' latent
  codes from ``autoencoder.latent_codes`` (the paper's route), divided by its largest value so a
  distance threshold means the same fraction of the spread whatever the latent scale.

The tree is cut either at a distance threshold or into a number of clusters. A cluster takes part
in sharing only if it has at least ``min_cluster_size`` heads and its mean within-cluster
similarity (always measured with the similarity metric, whatever the features) reaches
``min_similarity``; singletons are the heads unlike any other and are never shared.

Models with local (sliding-window) and global layers: each kind of layer is clustered on its own
(``kinds``), so no cluster mixes heads of different kinds; ``n_clusters`` is split over the kinds in
proportion to their head counts (at least one each).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from .choices import Features
from .cluster_config import DEFAULT_DISTANCE_THRESHOLD, ClusterConfig  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class HeadCluster:
    id: int
    heads: tuple[tuple[int, int], ...]  # (layer, head), sorted
    shared: bool
    mean_similarity: float | None  # mean over pairs within the cluster; None for a singleton

    @property
    def size(self) -> int:
        return len(self.heads)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted({layer for layer, _ in self.heads}))


@dataclass(frozen=True)
class Clustering:
    labels: tuple[int, ...]  # cluster id of each head, layer-major
    clusters: tuple[HeadCluster, ...]  # ids 0..K-1: largest first

    @property
    def shared_clusters(self) -> tuple[HeadCluster, ...]:
        return tuple(c for c in self.clusters if c.shared)

    @property
    def num_shared_heads(self) -> int:
        return sum(c.size for c in self.shared_clusters)


def similarity_distance(similarity: torch.Tensor) -> np.ndarray:
    """Condensed distance vector ``1 - similarity`` (symmetrised, clipped, zero diagonal)."""
    from scipy.spatial.distance import squareform

    d = 1.0 - similarity.double().numpy()
    d = np.clip(0.5 * (d + d.T), 0.0, 1.0)
    np.fill_diagonal(d, 0.0)
    return squareform(d, checks=False)


def feature_distance(codes: torch.Tensor) -> np.ndarray:
    """Condensed Euclidean distances between feature rows, divided by the largest distance."""
    from scipy.spatial.distance import pdist

    d = pdist(codes.double().numpy(), metric="euclidean")
    top = d.max() if d.size else 0.0
    return d / top if top > 0 else d


def cut_labels(condensed: np.ndarray, num: int, config: ClusterConfig) -> np.ndarray:
    """Flat cluster labels (0-based, arbitrary order) of ``num`` items."""
    from scipy.cluster.hierarchy import fcluster, linkage

    if num == 1:
        return np.zeros(1, dtype=np.int64)
    tree = linkage(condensed, method=config.linkage.value)
    if config.n_clusters is not None:
        labels = fcluster(tree, t=min(config.n_clusters, num), criterion="maxclust")
    else:
        labels = fcluster(tree, t=config.distance_threshold, criterion="distance")
    return labels.astype(np.int64) - 1


def cluster_shares(sizes: list[int], n_clusters: int | None) -> list[int | None]:
    """``n_clusters`` split over groups of ``sizes`` items, in proportion (at least 1, at most the size)."""
    if n_clusters is None:
        return [None] * len(sizes)
    total = sum(sizes)
    return [min(size, max(1, round(n_clusters * size / total))) for size in sizes]


def cut_within_kinds(condensed: np.ndarray, kinds: list[int], config: ClusterConfig) -> np.ndarray:
    """Flat labels as ``cut_labels``, but each kind of head cut on its own (labels never span kinds)."""
    from scipy.spatial.distance import squareform

    groups: dict[int, list[int]] = {}
    for i, kind in enumerate(kinds):
        groups.setdefault(kind, []).append(i)
    if len(groups) < 2:
        return cut_labels(condensed, len(kinds), config)
    square = squareform(condensed, checks=False)
    labels = np.empty(len(kinds), dtype=np.int64)
    offset = 0
    members = list(groups.values())
    for group, share in zip(members, cluster_shares([len(m) for m in members], config.n_clusters)):
        idx = np.array(group)
        sub = squareform(square[np.ix_(idx, idx)], checks=False)
        part = cut_labels(sub, len(group), config if share is None else replace(config, n_clusters=share))
        labels[idx] = part + offset
        offset += int(part.max()) + 1
    return labels


def mean_within(similarity: torch.Tensor, members: list[int]) -> float | None:
    if len(members) < 2:
        return None
    idx = torch.tensor(members)
    block = similarity[idx][:, idx].double()
    n = len(members)
    return float((block.sum() - block.diagonal().sum()) / (n * (n - 1)))


def build_clusters(raw: np.ndarray, similarity: torch.Tensor, num_heads: int,
                   config: ClusterConfig) -> Clustering:
    """Renumber raw labels (largest cluster first) and attach statistics and shared flags."""
    groups: dict[int, list[int]] = {}
    for i, lab in enumerate(raw.tolist()):
        groups.setdefault(lab, []).append(i)
    ordered = sorted(groups.values(), key=lambda m: (-len(m), m[0]))
    labels = [0] * len(raw)
    clusters = []
    for cid, members in enumerate(ordered):
        for i in members:
            labels[i] = cid
        mean = mean_within(similarity, members)
        shared = len(members) >= config.min_cluster_size and mean is not None and mean >= config.min_similarity
        heads = tuple((i // num_heads, i % num_heads) for i in members)
        clusters.append(HeadCluster(cid, heads, shared, mean))
    return Clustering(tuple(labels), tuple(clusters))


def cluster_heads(similarity: torch.Tensor, num_heads: int, config: ClusterConfig,
                  codes: torch.Tensor | None = None, kinds: list[int] | None = None) -> Clustering:
    """Cluster ``P = L * H`` heads.

    ``similarity`` is the ``[P, P]`` calibration aggregate (mean over prompts); it drives the
    clustering for ``features=similarity`` and the statistics always. ``codes`` (``[P, d]``) are
    required for ``features=autoencoder``. ``kinds`` (one int per head, e.g.
    ``similarity.head_kinds``) keeps heads of different kinds in different clusters.
    """
    num = similarity.shape[0]
    if num % num_heads:
        raise ValueError(f"{num} heads do not split into layers of {num_heads}")
    if config.features is Features.AUTOENCODER:
        if codes is None or codes.shape[0] != num:
            raise ValueError("features=autoencoder needs one latent code per head")
        condensed = feature_distance(codes)
    else:
        condensed = similarity_distance(similarity)
    if kinds is not None and len(kinds) != num:
        raise ValueError(f"{len(kinds)} head kinds for {num} heads")
    raw = cut_within_kinds(condensed, kinds, config) if kinds is not None else cut_labels(condensed, num, config)
    return build_clusters(raw, similarity, num_heads, config)


def _comb2(x: np.ndarray) -> float:
    return float((x * (x - 1) / 2.0).sum())


def adjusted_rand_index(a: list[int] | np.ndarray, b: list[int] | np.ndarray) -> float:
    """Adjusted Rand index of two flat labelings of the same items (1 = identical partitions)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError("labelings must have the same length")
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1), dtype=np.float64)
    np.add.at(table, (ai, bi), 1.0)
    index = _comb2(table)
    rows, cols = _comb2(table.sum(axis=1)), _comb2(table.sum(axis=0))
    total = _comb2(np.array([float(a.size)]))
    expected = rows * cols / total if total > 0 else 0.0
    maximum = 0.5 * (rows + cols)
    if maximum == expected:  # both partitions trivial (all one cluster or all singletons)
        return 1.0 if index == expected else 0.0
    return float((index - expected) / (maximum - expected))
