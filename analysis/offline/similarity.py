"""Similarity between every pair of attention heads of one record.

Heads are numbered layer-major: head ``(l, h)`` is row ``l * H + h`` of every matrix here.
Three metrics (``Metric``):

* ``jaccard``: Jaccard index of the heads' coverage masks at ``gamma`` (the paper's metric);
  computed for all pairs at once as a product of the flattened masks, chunked over the cells.
* ``js``: ``1 - sqrt(JS)`` of the block-pooled vertical and slash profiles (base-2 logs, so the
  distance lies in [0, 1]); the two are combined with ``JsCombine``. With the default ``worst``
  (the larger of the two distances) a pair scores at least ``1 - tau_s`` exactly when it would
  pass the online sharing test at ``tau_s``, so "similarity > 0.5" means "shareable at 0.5".
* ``cosine``: cosine similarity of the block-mass maps.

Layers of different kinds (global, or local with a sliding window of w tokens: the record's
``layer_windows``) see different keys, so a pair of heads from layers of different kinds has
similarity 0 by definition (``separate_kinds``): such heads are never shared.

NaN-safety, the same for all three: a head's similarity with itself is 1; two heads with no
mass at all are identical (1); a head with no mass and one with mass share nothing (0); NaN or
negative inputs count as zero mass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...kernels.limits import ConfigError
from ..files.records import AttentionRecord, check_compatible
from ..method.coverage import clean_mass, coverage_mask, flatten_causal
from ..method.method_config import DEFAULT_GAMMA, check_gamma
from .choices import JsCombine, Metric


@dataclass(frozen=True)
class SimilarityConfig:
    metric: Metric = Metric.JACCARD
    gamma: float = DEFAULT_GAMMA  # coverage of each query-block row for the jaccard metric
    js_combine: JsCombine = JsCombine.WORST
    eps: float = 1e-10  # added to every profile entry before normalising (no 0 log 0)
    head_chunk: int = 64  # heads per chunk while building masks (bounds peak memory)
    cell_chunk: int = 1 << 16  # flattened cells per chunk of the all-pairs product

    def __post_init__(self):
        object.__setattr__(self, "metric", Metric(self.metric))
        object.__setattr__(self, "js_combine", JsCombine(self.js_combine))
        check_gamma(self.gamma)
        if not (0.0 < self.eps < 1e-3):
            raise ConfigError(f"eps must be in (0, 1e-3), got {self.eps}")
        if self.head_chunk < 1 or self.cell_chunk < 1:
            raise ConfigError("head_chunk and cell_chunk must be positive")

    def to_json(self) -> dict:
        return {"metric": self.metric.value, "gamma": self.gamma, "js_combine": self.js_combine.value}


def head_label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def head_labels(num_layers: int, num_heads: int) -> list[str]:
    return [head_label(l, h) for l in range(num_layers) for h in range(num_heads)]


def _finish(sim: torch.Tensor) -> torch.Tensor:
    """Symmetrise, clip to [0, 1], set the diagonal to 1; NaN (never expected) becomes 0."""
    sim = torch.nan_to_num(sim, nan=0.0).clamp(0.0, 1.0)
    sim = 0.5 * (sim + sim.T)
    sim.fill_diagonal_(1.0)
    return sim


def _gram(flat: torch.Tensor, cell_chunk: int) -> torch.Tensor:
    """``flat @ flat.T`` in fp32 (fp64 accumulation across chunks), chunked over columns."""
    p, f = flat.shape
    acc = torch.zeros(p, p, dtype=torch.float64, device=flat.device)
    for start in range(0, f, cell_chunk):
        part = flat[:, start:start + cell_chunk].float()
        acc += (part @ part.T).double()
    return acc


def jaccard_from_masks(masks: torch.Tensor, cell_chunk: int = 1 << 16) -> torch.Tensor:
    """All-pairs Jaccard of flattened bool masks ``[P, F]`` -> ``[P, P]`` float32."""
    inter = _gram(masks, cell_chunk)
    sizes = masks.sum(dim=1, dtype=torch.float64)
    union = sizes[:, None] + sizes[None, :] - inter
    sim = torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))
    return _finish(sim.float())


def cosine_from_maps(maps: torch.Tensor, cell_chunk: int = 1 << 16) -> torch.Tensor:
    """All-pairs cosine of flattened non-negative maps ``[P, F]`` -> ``[P, P]`` float32."""
    maps = clean_mass(maps)
    dots = _gram(maps, cell_chunk)
    norms = dots.diagonal().clamp_min(0.0).sqrt()
    both = norms[:, None] * norms[None, :]
    empty = (norms[:, None] == 0) & (norms[None, :] == 0)
    sim = torch.where(both > 0, dots / both.clamp_min(1e-300), empty.double())
    return _finish(sim.float())


def normalise_profiles(profiles: torch.Tensor, eps: float) -> torch.Tensor:
    """``[P, n]`` -> probability rows: clean, add ``eps`` everywhere, divide by the sum."""
    p = clean_mass(profiles).double() + eps
    return p / p.sum(dim=-1, keepdim=True)


def js_distance_matrix(profiles: torch.Tensor, eps: float = 1e-10, max_elems: int = 1 << 24) -> torch.Tensor:
    """All-pairs square-root Jensen-Shannon distance (base 2, in [0, 1]) of ``[P, n]`` profiles.

    Uses ``JS(p, q) = H(m) - (H(p) + H(q)) / 2`` with ``m = (p + q) / 2``, so only the mixture's
    entropy needs a pairwise pass; rows are processed in chunks of at most ``max_elems`` values.
    """
    p = normalise_profiles(profiles, eps)
    num, n = p.shape
    neg_ent = torch.xlogy(p, p).sum(dim=-1)  # sum p log p, [P]
    out = torch.empty(num, num, dtype=torch.float64, device=p.device)
    rows = max(1, max_elems // max(num * n, 1))
    for start in range(0, num, rows):
        a = p[start:start + rows, None, :]  # [c, 1, n]
        mix = 0.5 * (a + p[None, :, :])  # [c, P, n]
        mix_neg_ent = torch.xlogy(mix, mix).sum(dim=-1)  # [c, P]
        js = 0.5 * (neg_ent[start:start + rows, None] + neg_ent[None, :]) - mix_neg_ent
        out[start:start + rows] = js / math.log(2.0)
    dist = out.clamp(0.0, 1.0).sqrt()
    dist.fill_diagonal_(0.0)
    return dist.float()


def _flat_heads(x: torch.Tensor) -> torch.Tensor:
    """``[L, H, ...]`` -> ``[L*H, ...]`` (layer-major)."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def head_masks(record: AttentionRecord, gamma: float, head_chunk: int = 64) -> torch.Tensor:
    """Flattened causal coverage masks of every head: ``[L*H, nb(nb+1)/2]`` bool."""
    maps = _flat_heads(record.block_mass)
    parts = [flatten_causal(coverage_mask(maps[s:s + head_chunk], gamma))
             for s in range(0, maps.shape[0], head_chunk)]
    return torch.cat(parts, dim=0)


def pooled_profiles(record: AttentionRecord) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertical and slash profiles sum-pooled to blocks: two ``[L*H, nb]`` tensors."""
    from sharedattn.kernels.reference import pool_cols_sum

    b = record.meta.block_size
    vertical = pool_cols_sum(clean_mass(_flat_heads(record.vertical)), b)
    slash = pool_cols_sum(clean_mass(_flat_heads(record.slash)), b)
    return vertical, slash


def js_similarity(record: AttentionRecord, config: SimilarityConfig) -> torch.Tensor:
    vertical, slash = pooled_profiles(record)
    dv = js_distance_matrix(vertical, config.eps)
    ds = js_distance_matrix(slash, config.eps)
    dist = torch.maximum(dv, ds) if config.js_combine is JsCombine.WORST else 0.5 * (dv + ds)
    return _finish(1.0 - dist)


def head_kinds(windows: tuple[int | None, ...], num_heads: int) -> torch.Tensor:
    """Kind of every head, layer-major: one int per distinct layer window (global is a kind too)."""
    ids = {w: i for i, w in enumerate(dict.fromkeys(windows))}
    return torch.tensor([ids[w] for w in windows]).repeat_interleave(num_heads)


def cross_kind_pairs(windows: tuple[int | None, ...], num_heads: int) -> torch.Tensor:
    """Bool ``[P, P]``: True where the two heads come from layers of different kinds."""
    kinds = head_kinds(windows, num_heads)
    return kinds[:, None] != kinds[None, :]


def separate_kinds(sim: torch.Tensor, windows: tuple[int | None, ...], num_heads: int) -> torch.Tensor:
    """Set the similarity of every cross-kind pair to 0 (a copy; unchanged when all layers are alike)."""
    if len(set(windows)) < 2:
        return sim
    return sim.masked_fill(cross_kind_pairs(windows, num_heads), 0.0)


def similarity_matrix(record: AttentionRecord, config: SimilarityConfig = SimilarityConfig()) -> torch.Tensor:
    """``[L*H, L*H]`` float32 similarity of every pair of heads of one record, in [0, 1].

    The work runs on the record's device; the (small) result comes back on the CPU. Pairs of heads
    from layers of different kinds (``record.meta.windows``) are 0.
    """
    if config.metric is Metric.JACCARD:
        sim = jaccard_from_masks(head_masks(record, config.gamma, config.head_chunk), config.cell_chunk)
    elif config.metric is Metric.COSINE:
        maps = torch.cat([flatten_causal(clean_mass(m)) for m in
                          _flat_heads(record.block_mass).split(config.head_chunk)], dim=0)
        sim = cosine_from_maps(maps, config.cell_chunk)
    else:
        sim = js_similarity(record, config)
    return separate_kinds(sim.cpu(), record.meta.windows, record.meta.model.num_heads)


def similarity_matrices(records: list[AttentionRecord], config: SimilarityConfig) -> list[torch.Tensor]:
    """One matrix per record, after checking that all records come from one model and block size."""
    if not records:
        raise ValueError("no records given")
    check_compatible(records)
    return [similarity_matrix(r, config) for r in records]


def mean_similarity(matrices: list[torch.Tensor]) -> torch.Tensor:
    """Mean over prompts of per-prompt similarity matrices (the calibration aggregate)."""
    return torch.stack(matrices).mean(dim=0)
