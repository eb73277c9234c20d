"""Summaries of a head-similarity matrix, and writing the matrix to .npy and .csv.

The summary answers the paper's first observation for one matrix: how many head pairs are
alike (above a threshold, default 0.5) within a layer and across layers, which head is each
head's closest partner, and which layers are most and least shareable. A layer's shareability
is the mean, over its heads, of each head's best similarity to any other head.

With local (sliding-window) and global layers (``windows``), pairs of heads from layers of different
kinds are left out of every share, mean and partner: only heads of the same kind are compared.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import torch

from ..files.atomic import write_text_atomic, write_with
from ..method.method_config import check_fraction
from .cluster_config import DEFAULT_ALIKE
from .similarity import cross_kind_pairs, head_label, head_labels


def check_threshold(threshold: float, name: str = "threshold") -> float:
    return check_fraction(name, threshold, low_open=False)


@dataclass(frozen=True)
class Partner:
    layer: int
    head: int
    partner_layer: int
    partner_head: int
    similarity: float

    def to_json(self) -> dict:
        return {"head": [self.layer, self.head], "partner": [self.partner_layer, self.partner_head],
                "similarity": self.similarity}


@dataclass(frozen=True)
class LayerScore:
    layer: int
    mean_best: float  # mean over the layer's heads of their best partner's similarity
    share_above: float  # share of pairs involving the layer's heads that exceed the threshold

    def to_json(self) -> dict:
        return vars(self).copy()


@dataclass(frozen=True)
class SimilaritySummary:
    metric: str
    threshold: float
    num_layers: int
    num_heads: int
    share_within: float  # share of same-layer pairs (i < j) above the threshold
    share_across: float  # share of different-layer pairs above the threshold
    mean_within: float
    mean_across: float
    partners: tuple[Partner, ...]
    layers: tuple[LayerScore, ...]  # sorted, most shareable first
    local_layers: tuple[int, ...] = ()  # layers with a sliding window (compared only with their kind)

    def to_json(self) -> dict:
        return {
            "local_layers": list(self.local_layers),
            "metric": self.metric, "threshold": self.threshold,
            "num_layers": self.num_layers, "num_heads": self.num_heads,
            "share_within": self.share_within, "share_across": self.share_across,
            "mean_within": self.mean_within, "mean_across": self.mean_across,
            "partners": [p.to_json() for p in self.partners],
            "layers": [s.to_json() for s in self.layers],
        }


def pair_masks(num_layers: int, num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool ``[P, P]`` masks of the upper-triangle pairs within one layer and across layers."""
    layer = torch.arange(num_layers).repeat_interleave(num_heads)
    upper = torch.ones(len(layer), len(layer), dtype=torch.bool).triu(diagonal=1)
    same = layer[:, None] == layer[None, :]
    return upper & same, upper & ~same


def _share(values: torch.Tensor, threshold: float) -> float:
    return float((values > threshold).float().mean()) if values.numel() else 0.0


def _mean(values: torch.Tensor) -> float:
    return float(values.double().mean()) if values.numel() else 0.0


def best_partners(matrix: torch.Tensor, num_heads: int) -> tuple[Partner, ...]:
    """Each head's most similar other head (ties: lowest index)."""
    off = matrix.clone().float()
    off.fill_diagonal_(-1.0)
    values, index = off.max(dim=1)
    out = []
    for i, (v, j) in enumerate(zip(values.tolist(), index.tolist())):
        out.append(Partner(i // num_heads, i % num_heads, j // num_heads, j % num_heads, max(v, 0.0)))
    return tuple(out)


def layer_scores(matrix: torch.Tensor, num_layers: int, num_heads: int, threshold: float):
    off = matrix.clone().float()
    off.fill_diagonal_(float("nan"))
    best = torch.nan_to_num(off, nan=-1.0).max(dim=1).values.clamp_min(0.0)
    scores = []
    for layer in range(num_layers):
        rows = slice(layer * num_heads, (layer + 1) * num_heads)
        block = off[rows]
        vals = block[~torch.isnan(block)]
        scores.append(LayerScore(layer, _mean(best[rows]), _share(vals, threshold)))
    return tuple(sorted(scores, key=lambda s: (-s.mean_best, s.layer)))


def summarize(matrix: torch.Tensor, num_layers: int, num_heads: int, metric: str,
              threshold: float = DEFAULT_ALIKE, windows: tuple[int | None, ...] | None = None) -> SimilaritySummary:
    """Summarise a ``[L*H, L*H]`` similarity matrix; ``windows`` (one per layer, None: global) leaves
    cross-kind pairs out."""
    check_threshold(threshold)
    p = num_layers * num_heads
    if tuple(matrix.shape) != (p, p):
        raise ValueError(f"matrix shape {tuple(matrix.shape)} does not fit {num_layers} x {num_heads} heads")
    within, across = pair_masks(num_layers, num_heads)
    windows = tuple(windows or (None,) * num_layers)
    local = tuple(i for i, w in enumerate(windows) if w is not None)
    if len(set(windows)) > 1:
        cross = cross_kind_pairs(windows, num_heads)
        across = across & ~cross
        matrix = matrix.float().masked_fill(cross, float("nan"))
    return SimilaritySummary(
        metric=metric, threshold=threshold, num_layers=num_layers, num_heads=num_heads,
        share_within=_share(matrix[within], threshold), share_across=_share(matrix[across], threshold),
        mean_within=_mean(matrix[within]), mean_across=_mean(matrix[across]),
        partners=best_partners(torch.nan_to_num(matrix, nan=-1.0), num_heads),
        layers=layer_scores(matrix, num_layers, num_heads, threshold), local_layers=local,
    )


def matrix_csv(matrix: torch.Tensor, labels: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["head", *labels])
    for label, row in zip(labels, matrix.tolist()):
        writer.writerow([label, *(f"{v:.6f}" for v in row)])
    return buf.getvalue()


def save_matrix(matrix: torch.Tensor, prefix: Path, num_layers: int, num_heads: int) -> tuple[Path, Path]:
    """Write ``<prefix>.npy`` (float32) and ``<prefix>.csv`` (labelled) atomically."""
    import numpy as np

    prefix = Path(prefix)
    if prefix.suffix in (".npy", ".csv"):
        prefix = prefix.with_suffix("")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    npy, csv_path = prefix.with_suffix(".npy"), prefix.with_suffix(".csv")
    array = matrix.detach().float().cpu().numpy()

    def write_npy(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, array)

    write_with(npy, write_npy)
    write_text_atomic(csv_path, matrix_csv(matrix, head_labels(num_layers, num_heads)))
    return npy, csv_path


__all__ = ["Partner", "LayerScore", "SimilaritySummary", "summarize", "save_matrix", "check_threshold",
           "best_partners", "layer_scores", "pair_masks", "head_label"]


def save_similarity(out: Path, metric: str, matrix: torch.Tensor, summary: SimilaritySummary,
                    num_layers: int, num_heads: int) -> dict[str, str]:
    """What `sharedattn similarity` writes into ``out``: the matrix (``similarity-<metric>.npy`` and
    ``.csv``) and each head's best partner (``.partners.csv``); returns the paths by kind."""
    npy, csv_path = save_matrix(matrix, Path(out) / f"similarity-{metric}", num_layers, num_heads)
    partners = Path(out) / f"similarity-{metric}.partners.csv"
    lines = ["head,partner,similarity"] + [f"L{p.layer}H{p.head},L{p.partner_layer}H{p.partner_head},"
                                           f"{p.similarity:.6f}" for p in summary.partners]
    write_text_atomic(partners, "\n".join(lines) + "\n")
    return {"npy": str(npy), "csv": str(csv_path), "partners": str(partners)}
