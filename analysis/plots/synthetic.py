"""Structured synthetic attention records, for tests and for trying figures without a model.

Each head's block-mass map mixes the shapes real heads show: an attention-sink column (key block
0), a band along the diagonal, a few vertical stripes, and noise; rows are causal and sum to 1.
Heads are dealt round-robin into ``num_groups`` families that share stripe positions and band
width, so similarity matrices and clusterings of a synthetic record have real structure.
"""
from __future__ import annotations

import hashlib

import torch

from ..fingerprint import ModelFingerprint
from ..records import AttentionRecord, PromptInfo, RecordMeta


def _family_map(nb: int, gen: torch.Generator, *, sink: float, band: int, stripes: torch.Tensor,
                noise: float) -> torch.Tensor:
    """One causal ``[nb, nb]`` map, rows summing to 1."""
    r = torch.arange(nb)[:, None]
    c = torch.arange(nb)[None, :]
    causal = c <= r
    dist = (r - c).float()
    m = torch.exp(-dist / max(band, 1)) * 2.0  # diagonal band
    m[:, 0] += sink * nb / 8  # sink column
    m[:, stripes] += 1.5  # vertical stripes
    m = m * torch.exp(noise * torch.randn(nb, nb, generator=gen))
    m = torch.where(causal, m, torch.zeros(()))
    return m / m.sum(dim=1, keepdim=True)


def _profiles(bm: torch.Tensor, block_size: int, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Plausible token-level vertical and slash profiles from a map's last row."""
    last = bm[-1]  # [nb]
    vertical = (last / block_size).repeat_interleave(block_size)[:num_tokens]
    offsets = torch.arange(num_tokens, dtype=torch.float32)
    slash = torch.exp(-offsets / (4 * block_size)) + vertical.flip(0)
    return vertical, slash / slash.sum()


def synthetic_record(num_layers: int = 4, num_heads: int = 4, num_tokens: int = 1024,
                     block_size: int = 64, *, num_groups: int = 3, noise: float = 0.3,
                     seed: int = 0, model_id: str = "synthetic", prompt_name: str = "synthetic") -> AttentionRecord:
    """A valid ``AttentionRecord`` with structured maps (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    nb = (num_tokens + block_size - 1) // block_size
    families = []
    for g in range(num_groups):
        stripes = torch.randperm(nb, generator=gen)[: max(1, nb // 16)]
        families.append(dict(sink=0.5 + g, band=1 + 2 * g, stripes=stripes))
    bm = torch.empty(num_layers, num_heads, nb, nb)
    vertical = torch.empty(num_layers, num_heads, num_tokens)
    slash = torch.empty(num_layers, num_heads, num_tokens)
    for layer in range(num_layers):
        for head in range(num_heads):
            fam = families[(layer * num_heads + head) % num_groups]
            bm[layer, head] = _family_map(nb, gen, noise=noise, **fam)
            vertical[layer, head], slash[layer, head] = _profiles(bm[layer, head], block_size, num_tokens)
    fingerprint = ModelFingerprint(model_id, num_layers, num_heads, max(1, num_heads // 2), 64, 8192)
    digest = hashlib.sha256(f"{prompt_name}:{seed}:{num_tokens}".encode()).hexdigest()
    meta = RecordMeta(model=fingerprint, block_size=block_size, num_tokens=num_tokens,
                      prompt=PromptInfo(prompt_name, digest, f"synthetic prompt {prompt_name}"))
    return AttentionRecord(meta, bm, vertical, slash)
