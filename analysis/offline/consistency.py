"""Cross-input consistency: does "which heads are alike" hold while each head's pattern changes?

For every pair of prompts (records of one model and block size) three numbers:

a. Spearman rank correlation between the two head-similarity matrices (upper triangle only:
   each unordered pair of heads once, no diagonal);
b. top-k neighbour overlap: for each head, the share of its k most similar heads in prompt A
   that are also among its k most similar heads in prompt B (chance level: k / (P - 1));
c. own-pattern Jaccard: for each head, the Jaccard index of its own coverage masks in the two
   prompts. Prompts of different lengths are compared on their common leading block grid (see
   ``coverage.common_grid``): the same absolute positions, no resampling.

High (a) and (b) with a clearly lower (c) is the paper's claim: patterns change, similarity holds.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ..files.records import AttentionRecord, check_compatible
from ..method.coverage import common_grid, coverage_mask
from ..method.method_config import DEFAULT_GAMMA


def spearman_upper(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman correlation of the strict upper triangles of two square matrices.

    NaN-safe: if either side is constant the correlation is undefined; it is reported as 1.0
    when both triangles are identical and 0.0 otherwise.
    """
    from scipy.stats import spearmanr

    iu = torch.triu_indices(a.shape[0], a.shape[0], offset=1)
    x = a[iu[0], iu[1]].double().numpy()
    y = b[iu[0], iu[1]].double().numpy()
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return 1.0 if (x == y).all() else 0.0
    rho = spearmanr(x, y).statistic
    return float(rho) if rho == rho else 0.0


def top_k_sets(matrix: torch.Tensor, k: int) -> torch.Tensor:
    """``[P, k]`` indices of each head's k most similar other heads (ties: lower index first)."""
    off = matrix.clone().double()
    num = off.shape[0]
    # a tiny index-dependent tie-break keeps the choice deterministic among equal values
    off -= torch.arange(num, dtype=torch.float64)[None, :] * 1e-12
    off.fill_diagonal_(float("-inf"))
    return off.topk(k, dim=1).indices


def top_k_overlap(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """Per head, |topk_A & topk_B| / k: ``[P]`` float32."""
    num = a.shape[0]
    if not (1 <= k < num):
        raise ValueError(f"top_k must be in [1, {num - 1}] for {num} heads, got {k}")
    in_a = torch.zeros(num, num, dtype=torch.bool).scatter_(1, top_k_sets(a, k), True)
    in_b = torch.zeros(num, num, dtype=torch.bool).scatter_(1, top_k_sets(b, k), True)
    return (in_a & in_b).sum(dim=1).float() / k


def own_pattern_jaccard(mask_a: torch.Tensor, mask_b: torch.Tensor) -> torch.Tensor:
    """Per head Jaccard of two ``[P, n, n]`` bool masks (two empty masks count as identical)."""
    a, b = common_grid([mask_a, mask_b])
    inter = (a & b).sum(dim=(-2, -1)).float()
    union = (a | b).sum(dim=(-2, -1)).float()
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))


@dataclass(frozen=True)
class PairConsistency:
    prompt_a: int
    prompt_b: int
    spearman: float
    top_k_overlap: float  # mean over heads
    own_jaccard: float  # mean over heads
    common_blocks: int  # query-block rows compared for own_jaccard

    def to_json(self) -> dict:
        return vars(self).copy()


@dataclass(frozen=True)
class ConsistencyReport:
    top_k: int
    gamma: float
    chance_top_k_overlap: float
    pairs: tuple[PairConsistency, ...]
    head_own_jaccard: tuple[float, ...]  # per head (layer-major), mean over prompt pairs
    head_top_k_overlap: tuple[float, ...]  # per head, mean over prompt pairs

    def _mean(self, name: str) -> float:
        return sum(getattr(p, name) for p in self.pairs) / len(self.pairs)

    @property
    def mean_spearman(self) -> float:
        return self._mean("spearman")

    @property
    def mean_top_k_overlap(self) -> float:
        return self._mean("top_k_overlap")

    @property
    def mean_own_jaccard(self) -> float:
        return self._mean("own_jaccard")

    def to_json(self) -> dict:
        return {
            "top_k": self.top_k, "gamma": self.gamma,
            "chance_top_k_overlap": self.chance_top_k_overlap,
            "mean_spearman": self.mean_spearman,
            "mean_top_k_overlap": self.mean_top_k_overlap,
            "mean_own_jaccard": self.mean_own_jaccard,
            "pairs": [p.to_json() for p in self.pairs],
            "head_own_jaccard": list(self.head_own_jaccard),
            "head_top_k_overlap": list(self.head_top_k_overlap),
        }


def head_coverage_masks(record: AttentionRecord, gamma: float) -> torch.Tensor:
    """``[L*H, nb, nb]`` bool coverage masks of one record."""
    bm = record.block_mass
    return coverage_mask(bm.reshape(bm.shape[0] * bm.shape[1], *bm.shape[2:]), gamma)


def consistency(records: list[AttentionRecord], matrices: list[torch.Tensor], *,
                top_k: int = 5, gamma: float = DEFAULT_GAMMA) -> ConsistencyReport:
    """Compare every pair of prompts; ``matrices[i]`` is the similarity matrix of ``records[i]``."""
    if len(records) < 2:
        raise ValueError(f"cross-input consistency needs at least 2 prompts, got {len(records)}")
    if len(matrices) != len(records):
        raise ValueError("one similarity matrix per record is needed")
    check_compatible(records)
    masks = [head_coverage_masks(r, gamma) for r in records]
    pairs, own, overlap = [], [], []
    for i, j in itertools.combinations(range(len(records)), 2):
        ov = top_k_overlap(matrices[i], matrices[j], top_k)
        jac = own_pattern_jaccard(masks[i], masks[j])
        own.append(jac)
        overlap.append(ov)
        pairs.append(PairConsistency(
            prompt_a=i, prompt_b=j, spearman=spearman_upper(matrices[i], matrices[j]),
            top_k_overlap=float(ov.mean()), own_jaccard=float(jac.mean()),
            common_blocks=min(masks[i].shape[-2], masks[j].shape[-2]),
        ))
    num = matrices[0].shape[0]
    return ConsistencyReport(
        top_k=top_k, gamma=gamma, chance_top_k_overlap=top_k / (num - 1), pairs=tuple(pairs),
        head_own_jaccard=tuple(torch.stack(own).mean(dim=0).tolist()),
        head_top_k_overlap=tuple(torch.stack(overlap).mean(dim=0).tolist()),
    )
