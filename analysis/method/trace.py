"""The per-head trace of a sparse prefill: what each (layer, head) did, its density and coverage."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .method_config import Decision


@dataclass(frozen=True)
class PrefillTrace:
    """Tensors over ``[C, L, B, H]`` (C prefill chunks), on the CPU.

    ``source[..., 0/1]`` is the (layer, head) a shared head took its pattern from, -1 otherwise.
    """

    decision: torch.Tensor  # int8 Decision codes
    density: torch.Tensor  # kept / causal blocks
    coverage: torch.Tensor  # estimated covered mass of the probe row
    source: torch.Tensor  # [C, L, B, H, 2]
    recall: torch.Tensor | None = None  # true mass inside kept blocks, when measured
    masks: dict | None = None  # layer -> [B, H, nqb, nkb] bool of the last chunk, when kept
    dense_reasons: dict | None = None  # layer -> why it ran the model's dense attention (last chunk that did)

    @classmethod
    def from_layers(cls, chunks: list[dict], num_layers: int) -> "PrefillTrace":
        """From per-chunk ``{layer: LayerTrace}`` dicts (device tensors; moved in one go)."""
        fields = ("decision", "density", "coverage", "source")
        stacked = []
        for name in fields:
            per_chunk = [torch.stack([getattr(chunk[layer], name) for layer in range(num_layers)])
                         for chunk in chunks]
            stacked.append(torch.stack(per_chunk).cpu())
        recall = None
        if all(chunk[layer].recall is not None for chunk in chunks for layer in range(num_layers)):
            recall = torch.stack([torch.stack([chunk[layer].recall for layer in range(num_layers)])
                                  for chunk in chunks]).cpu()
        masks = {layer: chunks[-1][layer].mask for layer in range(num_layers)
                 if chunks[-1][layer].mask is not None} or None
        reasons = {layer: chunk[layer].dense_reason for chunk in chunks for layer in range(num_layers)
                   if chunk[layer].dense_reason is not None}
        return cls(*stacked, recall=recall, masks=masks, dense_reasons=reasons or None)

    def dense_layers(self) -> list[dict]:
        """``[{"layer", "reason"}]``: layers that ran dense for a feature the sparse path does not honour."""
        return [{"layer": layer, "reason": reason} for layer, reason in sorted((self.dense_reasons or {}).items())]

    def mean_recall(self) -> float | None:
        return None if self.recall is None else float(self.recall.float().mean())

    @property
    def num_heads_total(self) -> int:
        return self.decision.numel()

    def decision_shares(self) -> dict[str, float]:
        total = max(self.decision.numel(), 1)
        return {d.label: float((self.decision == int(d)).sum()) / total for d in Decision}

    def decision_counts(self) -> dict[str, int]:
        """How many (chunk, layer, batch element, head) entries took each decision."""
        return {d.label: int((self.decision == int(d)).sum()) for d in Decision}

    def overall_density(self) -> float:
        return float(self.density.mean())

    def per_layer_density(self) -> list[float]:
        return self.density.float().mean(dim=(0, 2, 3)).tolist()

    def head_rows(self, chunk: int = -1, batch: int = 0) -> list[dict]:
        """One JSON-ready row per (layer, head) of one chunk and batch element."""
        dec, den, cov, src = (t[chunk, :, batch] for t in (self.decision, self.density, self.coverage, self.source))
        rows = []
        for layer in range(dec.shape[0]):
            for head in range(dec.shape[1]):
                d = Decision(int(dec[layer, head]))
                row = {"layer": layer, "head": head, "decision": d.label,
                       "density": round(float(den[layer, head]), 5),
                       "covered_mass": round(float(cov[layer, head]), 5)}
                if self.recall is not None:
                    row["recall"] = round(float(self.recall[chunk, layer, batch, head]), 5)
                if d is Decision.SHARED:
                    row["shared_from"] = [int(src[layer, head, 0]), int(src[layer, head, 1])]
                rows.append(row)
        return rows

    def to_json(self) -> dict:
        return {"decision_shares": self.decision_shares(), "overall_density": self.overall_density(),
                "mean_recall": self.mean_recall(),
                "per_layer_density": self.per_layer_density(), "chunks": self.decision.shape[0],
                "dense_layers": self.dense_layers(),
                "heads": self.head_rows()}
