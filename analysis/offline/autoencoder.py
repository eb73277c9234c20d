"""The paper's feature route: a small convolutional autoencoder on heads' block-mass maps.

Each head's ``[nb, nb]`` block-mass map is resampled to a fixed ``grid x grid`` map by
area-weighted summation (every block's mass is split over the output cells it overlaps, so no
mass is ever dropped, whatever ``nb``), normalised to a mean row sum of 1, and square-rooted
(which compresses the attention sink's dominance so weaker structure still shapes the code).
The autoencoder trains on every (head, prompt) map; a head's feature is the mean of its latent
codes over the calibration prompts. Training is seeded and runs on CPU in seconds to a minute.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..files.records import AttentionRecord, check_compatible
from ..method.coverage import clean_mass
from .cluster_config import AutoencoderConfig  # noqa: F401  (re-exported; torch-free for the CLI)


def overlap_matrix(n: int, size: int) -> torch.Tensor:
    """``[size, n]``: share of input block c that falls in output cell i (columns sum to 1)."""
    edges_in = torch.arange(n + 1, dtype=torch.float64) / n
    edges_out = torch.arange(size + 1, dtype=torch.float64) / size
    lo = torch.maximum(edges_out[:-1, None], edges_in[None, :-1])
    hi = torch.minimum(edges_out[1:, None], edges_in[None, 1:])
    return ((hi - lo).clamp_min(0.0) * n).float()


def resize_mass(maps: torch.Tensor, size: int) -> torch.Tensor:
    """``[..., n, n]`` -> ``[..., size, size]`` by area-weighted summation; total mass preserved."""
    r = overlap_matrix(maps.shape[-1], size).to(maps.device)
    return r @ clean_mass(maps) @ r.T


def prepare_maps(block_mass: torch.Tensor, grid: int) -> torch.Tensor:
    """``[P, n, n]`` block-mass maps -> autoencoder inputs ``[P, 1, grid, grid]``."""
    small = resize_mass(block_mass, grid)
    total = small.sum(dim=(-2, -1), keepdim=True)
    dens = torch.where(total > 0, small * grid / total.clamp_min(1e-30), torch.zeros_like(small))
    return dens.sqrt().unsqueeze(1)


class ConvAutoencoder(nn.Module):
    """Three stride-2 convolutions down to ``grid / 8``, a linear bottleneck, and the mirror."""

    def __init__(self, grid: int, latent_dim: int):
        super().__init__()
        side = grid // 8
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * side * side, latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 32 * side * side), nn.ReLU(),
            nn.Unflatten(1, (32, side, side)),
            nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(8, 1, 4, stride=2, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


@dataclass(frozen=True)
class TrainResult:
    model: ConvAutoencoder
    losses: tuple[float, ...]  # mean reconstruction MSE per epoch


def train_autoencoder(inputs: torch.Tensor, config: AutoencoderConfig) -> TrainResult:
    """Train on ``[S, 1, grid, grid]`` inputs; deterministic for a given seed (global RNG untouched)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train(inputs, config)
    finally:
        torch.set_num_threads(threads)


def _train(inputs: torch.Tensor, config: AutoencoderConfig) -> TrainResult:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = ConvAutoencoder(config.grid, config.latent_dim)
        opt = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
        gen = torch.Generator().manual_seed(config.seed)
        losses = []
        for _ in range(config.epochs):
            order = torch.randperm(inputs.shape[0], generator=gen)
            total = 0.0
            for start in range(0, inputs.shape[0], config.batch_size):
                batch = inputs[order[start:start + config.batch_size]]
                loss = nn.functional.mse_loss(model(batch), batch)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * batch.shape[0]
            losses.append(total / inputs.shape[0])
    model.eval()
    return TrainResult(model, tuple(losses))


def latent_codes(records: list[AttentionRecord], config: AutoencoderConfig = AutoencoderConfig()
                 ) -> tuple[torch.Tensor, TrainResult]:
    """Train on all records' head maps; return each head's mean latent code ``[L*H, d]``."""
    if not records:
        raise ValueError("no records given")
    check_compatible(records)
    per_prompt = []
    for rec in records:
        bm = rec.block_mass
        per_prompt.append(prepare_maps(bm.reshape(bm.shape[0] * bm.shape[1], *bm.shape[2:]), config.grid))
    result = train_autoencoder(torch.cat(per_prompt, dim=0), config)
    with torch.no_grad():
        codes = torch.stack([result.model.encoder(x) for x in per_prompt]).mean(dim=0)
    return codes, result
