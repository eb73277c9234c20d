"""How heads are clustered (``ClusterConfig``, ``AutoencoderConfig``), in a module that imports no torch.

The CLI reads its `cluster` option defaults from here, so `sharedattn --help` stays fast and every
default is written once; ``clustering`` re-exports the config.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...kernels.limits import ConfigError
from ..method.method_config import check_fraction
from .choices import Features, Linkage

DEFAULT_DISTANCE_THRESHOLD = 0.5  # i.e. clusters whose heads are on average more than 0.5 alike
DEFAULT_ALIKE = 0.5  # similarity above which a pair of heads counts as alike (reports, `similarity`)


@dataclass(frozen=True)
class ClusterConfig:
    features: Features = Features.SIMILARITY
    linkage: Linkage = Linkage.AVERAGE
    distance_threshold: float | None = None  # cut height (default 0.5 unless n_clusters is given)
    n_clusters: int | None = None  # cut into at most this many clusters instead
    min_cluster_size: int = 2  # smaller clusters are not shared
    min_similarity: float = 0.5  # clusters less alike than this on average are not shared

    def __post_init__(self):
        object.__setattr__(self, "features", Features(self.features))
        object.__setattr__(self, "linkage", Linkage(self.linkage))
        if self.distance_threshold is not None and self.n_clusters is not None:
            raise ConfigError("give exactly one of distance_threshold and n_clusters")
        if self.distance_threshold is None and self.n_clusters is None:
            object.__setattr__(self, "distance_threshold", DEFAULT_DISTANCE_THRESHOLD)
        if self.distance_threshold is not None:
            check_fraction("distance_threshold", self.distance_threshold)
        if self.n_clusters is not None and self.n_clusters < 1:
            raise ConfigError(f"n_clusters must be at least 1, got {self.n_clusters}")
        if self.min_cluster_size < 2:
            raise ConfigError(f"min_cluster_size must be at least 2, got {self.min_cluster_size}")
        check_fraction("min_similarity", self.min_similarity, low_open=False)
        if self.linkage is Linkage.WARD and self.features is not Features.AUTOENCODER:
            raise ConfigError("ward linkage needs Euclidean features: use it with features=autoencoder")

    def to_json(self) -> dict:
        return {
            "features": self.features.value, "linkage": self.linkage.value,
            "distance_threshold": self.distance_threshold, "n_clusters": self.n_clusters,
            "min_cluster_size": self.min_cluster_size, "min_similarity": self.min_similarity,
        }


@dataclass(frozen=True)
class AutoencoderConfig:
    grid: int = 32  # maps are resampled to grid x grid; a multiple of 8
    latent_dim: int = 16
    epochs: int = 200
    batch_size: int = 256
    learning_rate: float = 2e-3
    seed: int = 0
    threads: int = 1  # intra-op CPU threads while training: these convolutions are too small to
    # gain from more, and on a busy machine extra threads cost up to 30x in synchronisation

    def __post_init__(self):
        if self.grid < 8 or self.grid % 8:
            raise ConfigError(f"grid must be a multiple of 8 and at least 8, got {self.grid}")
        for name in ("latent_dim", "epochs", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not (0.0 < self.learning_rate < 1.0):
            raise ConfigError(f"learning_rate must be in (0, 1), got {self.learning_rate}")

    def to_json(self) -> dict:
        return vars(self).copy()
