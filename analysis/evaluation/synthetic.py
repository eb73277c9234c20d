"""Synthetic attention records with planted head groups, for tests and cost measurements.

Each head follows one of four block-level shapes (``Shape``): an attention sink, a diagonal band,
vertical stripes, or slash lines (fixed diagonal offsets). Heads with the same shape form a
planted group. The shape's parameters (stripe columns, band width, slash offsets) come from the
record's ``seed``, so two records of different seeds have the same groups but different patterns:
exactly the "patterns change, similarity holds" situation. Block maps are causal and each row
sums to 1; the probe profiles are spread from the last block row so they agree with the map.
"""
from __future__ import annotations

import hashlib
from enum import Enum

import torch

from ..files.fingerprint import ModelFingerprint
from ..files.records import AttentionRecord, PromptInfo, RecordMeta


class Shape(str, Enum):
    SINK = "sink"
    BAND = "band"
    STRIPES = "stripes"
    SLASH = "slash"


SHAPES = tuple(Shape)


def _shape_scores(shape: Shape, nb: int, gen: torch.Generator) -> torch.Tensor:
    """Unnormalised ``[nb, nb]`` scores of one shape (the causal mask comes later)."""
    r = torch.arange(nb)[:, None].float()
    c = torch.arange(nb)[None, :].float()
    scores = torch.full((nb, nb), 0.02)
    if shape is Shape.SINK:
        scores = scores + 8.0 * (c == 0) + 1.0 * (c == r)
    elif shape is Shape.BAND:
        width = 1 + int(torch.randint(1, 4, (1,), generator=gen))
        scores = scores + 3.0 * ((r - c) < width) + 0.5 * (c == 0)
    elif shape is Shape.STRIPES:
        cols = torch.randint(0, max(nb, 1), (3,), generator=gen)
        stripe = torch.zeros(nb)
        stripe[cols] = 4.0
        scores = scores + stripe[None, :] + 1.0 * (c == 0)
    else:
        offsets = torch.randint(2, max(nb, 3), (2,), generator=gen).float()
        diag = ((r - c)[..., None] == offsets).any(dim=-1).float()
        scores = scores + 4.0 * diag + 1.0 * (c == r)
    return scores


def causal_normalise(scores: torch.Tensor) -> torch.Tensor:
    """Zero the upper triangle and make every row of ``[..., nb, nb]`` sum to 1."""
    nb = scores.shape[-1]
    causal = torch.ones(nb, nb).tril().bool()
    kept = scores.clamp_min(0.0) * causal
    return kept / kept.sum(dim=-1, keepdim=True).clamp_min(1e-30)


def _profiles(last_row: torch.Tensor, num_tokens: int, block_size: int):
    """Spread the last block row's mass over tokens: vertical; reversed for slash offsets."""
    nb = last_row.shape[-1]
    sizes = torch.tensor([min(block_size, num_tokens - c * block_size) for c in range(nb)]).float()
    vertical = (last_row / sizes).repeat_interleave(block_size, dim=-1)[..., :num_tokens]
    slash = vertical.flip(-1)  # offset o from the last query is key N-1-o
    return vertical, slash


def synthetic_record(num_layers: int = 4, num_heads: int = 4, num_tokens: int = 512,
                     block_size: int = 64, shapes: list[Shape] | None = None, noise: float = 0.05,
                     seed: int = 0, model_id: str = "synthetic") -> AttentionRecord:
    """A record whose head ``i`` (layer-major) follows ``shapes[i]`` (default: cycle through SHAPES).

    ``noise`` is the scale of multiplicative per-head log-normal noise on the block scores.
    """
    total = num_layers * num_heads
    shapes = list(shapes) if shapes is not None else [SHAPES[i % len(SHAPES)] for i in range(total)]
    if len(shapes) != total:
        raise ValueError(f"need {total} shapes, got {len(shapes)}")
    nb = (num_tokens + block_size - 1) // block_size
    gen = torch.Generator().manual_seed(seed)
    protos = {s: _shape_scores(s, nb, gen) for s in SHAPES}
    scores = torch.stack([protos[s] for s in shapes])  # [P, nb, nb]
    scores = scores * torch.exp(noise * torch.randn(scores.shape, generator=gen))
    maps = causal_normalise(scores).reshape(num_layers, num_heads, nb, nb)
    vertical, slash = _profiles(maps[..., -1, :], num_tokens, block_size)
    model = ModelFingerprint(model_id, num_layers, num_heads, num_heads, 64, max(num_tokens, 8192))
    digest = hashlib.sha256(f"{model_id}:{seed}:{num_tokens}".encode()).hexdigest()
    meta = RecordMeta(model, block_size, num_tokens, PromptInfo(f"synthetic-{seed}", digest, "synthetic"),
                      config={"synthetic": True, "noise": noise})
    return AttentionRecord(meta, maps.float(), vertical.float(), slash.float())


def large_synthetic_record(num_layers: int, num_heads: int, num_blocks: int, block_size: int = 128,
                           num_groups: int = 8, noise: float = 0.1, seed: int = 0,
                           device: torch.device | str | None = None) -> AttentionRecord:
    """A record at long-context scale (e.g. 32 x 32 heads, 1000 x 1000 blocks), built head by head.

    Heads copy one of ``num_groups`` prototypes with multiplicative noise; memory is the record
    itself (``4 * L * H * nb^2`` bytes of block maps) plus one map of temporaries.
    """
    gen = torch.Generator().manual_seed(seed)
    protos = [causal_normalise(_shape_scores(SHAPES[g % len(SHAPES)], num_blocks, gen)) for g in range(num_groups)]
    total = num_layers * num_heads
    maps = torch.empty(total, num_blocks, num_blocks, device=device)
    for i in range(total):
        jitter = torch.exp(noise * torch.randn(num_blocks, num_blocks, generator=gen))
        maps[i] = causal_normalise(protos[i % num_groups] * jitter).to(maps.device)
    maps = maps.reshape(num_layers, num_heads, num_blocks, num_blocks)
    num_tokens = num_blocks * block_size
    vertical, slash = _profiles(maps[..., -1, :].cpu(), num_tokens, block_size)
    model = ModelFingerprint(f"synthetic-{num_layers}x{num_heads}", num_layers, num_heads, num_heads, 128,
                             num_tokens)
    info = PromptInfo(f"synthetic-large-{seed}", hashlib.sha256(f"large:{seed}".encode()).hexdigest(), "synthetic")
    meta = RecordMeta(model, block_size, num_tokens, info, config={"synthetic": True, "noise": noise})
    return AttentionRecord(meta, maps, vertical.to(maps.device), slash.to(maps.device))
