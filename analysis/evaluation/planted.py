"""Planted-structure Q/K/V: long-context attention workloads with realistic sparse structure.

A random-init model has near-uniform attention, so speed runs at 32K-128K need inputs whose
attention has the structure real heads show. ``planted_layer`` builds one layer's q ``[B, H, N, D]``
and k, v ``[B, H_kv, N, D]`` (Llama-3.1-8B shapes by default: 32 query heads, 8 KV heads, D=128,
bf16) from torch ops on the target device, seeded, for any N. Every structure is a term of the
logit ``scale * q.k`` (the ``sqrt(D)`` of the scale is folded into q), in its own dimensions:

* **relative position** (80 dims, 40 rotation pairs): each KV group has a window W (128, 256
  or 512 tokens) and 40 seeded frequencies log-uniform in [0.4/W, 2.5/W]. q_i holds
  ``sum_s a_s rot(w (i - delta_s))`` and k_j ``rot(w j)``, so the logit is
  ``sum_s a_s K(i - j - delta_s)`` with ``K(d) = mean_m cos(w_m d)``: about 1 for |d| << W,
  decaying over ~W tokens, then ripples of std ~0.11 (deterministic along diagonals, as RoPE
  leaves: faint extra slashes). ``delta = 0`` is the **local window** (logit ``local``);
  ``delta_s > 0`` (3 offsets per group, 64-8192 tokens) are **slash diagonals** (logit ``slash``).
* **sink** (1 dim): key 0 gets logit ``sink`` for every query.
* **vertical stripes** (1 dim): a few short runs of keys (1-16 tokens; about ``2 log2(N/1K) + 1``
  runs per KV group) get logit ``stripe`` for every later query, times a per-query factor in
  [0.7, 1.3].
* **content** (46 dims): Gaussian keys and queries give background logits of std ``noise``;
  **retrieval spikes** add to the queries of a 32-512 token span the direction of one earlier key
  (logit ``retrieval`` on that key for those queries only: neither vertical nor slash), about
  ``N / 1024`` spikes per KV group.

Every non-zero amplitude grows by ``ln(N / 2048)``: the structures' share of the attention mass
stays the same at every length (with a fixed logit gap the N background keys would swallow it
and every head would turn dense at 128K; real long-context heads stay sparse).

Positions (stripes, slash offsets, retrieval pairs) belong to a KV group's *template* and are the
same in every layer; strengths belong to a query head's *style* (``Style``), jittered by +-15% per
(layer, head). Heads of one KV group with the same style form a **planted group**: the same
structure in every layer, so SharePrefill has something to share (``planted_cluster_table``).
Diffuse heads (weak structure, layer-0-like) are never shared. Densities at gamma 0.95
(``planted_densities``, exact block-mass maps, default spec, layer 0): mean over heads 0.44 at 2K,
0.31 at 4K, 0.21 at 8K, 0.15 at 16K; per style at 2K: local 0.32, vertical 0.48, slash 0.33,
retrieval 0.53, diffuse 0.96 (recorded in docs/benchmarks.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch

from ...kernels.limits import ConfigError
from ...kernels.reference import num_blocks
from ..method.coverage import coverage_mask, density
from ..method.method_config import DEFAULT_BLOCK_SIZE, DEFAULT_GAMMA

REL_PAIRS = 40  # rotation pairs of the relative-position block (80 dims)
SINK_DIM, STRIPE_DIM = 2 * REL_PAIRS, 2 * REL_PAIRS + 1
CONTENT_START = 2 * REL_PAIRS + 2
WINDOWS = (256, 128, 256, 512, 128, 256, 512, 128)  # local window (tokens) of each KV group
REF_LENGTH = 2048  # structure logits are as given at this length and grow by ln(N / REF_LENGTH)


class Style(str, Enum):
    LOCAL = "local"  # strong local window and sink (A-shape-like)
    VERTICAL = "vertical"  # strong stripes
    SLASH = "slash"  # slash diagonals
    RETRIEVAL = "retrieval"  # query-specific spikes (a query-aware head)
    DIFFUSE = "diffuse"  # weak structure everywhere (layer-0-like, ~90% density)


@dataclass(frozen=True)
class Strengths:
    """Logit amplitudes of one style (before the per-head jitter)."""

    local: float
    sink: float
    stripe: float
    slash: float
    retrieval: float
    noise: float  # std of the background logits


STYLES: dict[Style, Strengths] = {
    Style.LOCAL: Strengths(local=8.0, sink=12.0, stripe=2.0, slash=0.0, retrieval=0.0, noise=0.7),
    Style.VERTICAL: Strengths(local=5.0, sink=9.0, stripe=7.0, slash=0.0, retrieval=0.0, noise=0.7),
    Style.SLASH: Strengths(local=5.0, sink=9.0, stripe=1.0, slash=7.0, retrieval=0.0, noise=0.7),
    Style.RETRIEVAL: Strengths(local=5.0, sink=9.0, stripe=1.0, slash=0.0, retrieval=10.0, noise=0.7),
    Style.DIFFUSE: Strengths(local=1.5, sink=2.0, stripe=0.5, slash=0.0, retrieval=0.0, noise=0.3),
}

# Styles of the 4 query heads of each of the 8 KV groups: a typical middle layer.
DEFAULT_LAYOUT: tuple[tuple[Style, ...], ...] = (
    (Style.LOCAL,) * 4, (Style.VERTICAL,) * 4, (Style.SLASH,) * 4, (Style.RETRIEVAL,) * 4,
    (Style.LOCAL,) * 2 + (Style.VERTICAL,) * 2, (Style.SLASH,) * 2 + (Style.LOCAL,) * 2,
    (Style.VERTICAL,) * 2 + (Style.RETRIEVAL,) * 2, (Style.LOCAL,) * 2 + (Style.DIFFUSE,) * 2,
)


@dataclass(frozen=True)
class PlantedSpec:
    """Shapes, head styles and seed of a planted workload."""

    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    batch: int = 1
    seed: int = 0
    layout: tuple[tuple[Style, ...], ...] = DEFAULT_LAYOUT  # [kv_heads][group size] styles

    def __post_init__(self):
        if self.heads % self.kv_heads:
            raise ConfigError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        if self.head_dim < CONTENT_START + 8:
            raise ConfigError(f"head_dim must be at least {CONTENT_START + 8}, got {self.head_dim}")
        if len(self.layout) != self.kv_heads or any(len(g) != self.heads // self.kv_heads for g in self.layout):
            raise ConfigError("layout must list one style per query head, grouped by KV head")

    @property
    def styles(self) -> list[Style]:
        return [s for group in self.layout for s in group]


@dataclass(frozen=True)
class Template:
    """Positions of one KV group's structures for one N (the same in every layer)."""

    stripes: torch.Tensor  # [S] key positions in stripe runs
    slashes: torch.Tensor  # [Z] diagonal offsets (tokens)
    keys: torch.Tensor  # [R] retrieval key positions
    spans: torch.Tensor  # [R, 2] query spans [start, end) attending to them
    freqs: torch.Tensor  # [P] float64 rotation frequencies (rad / token) of the window kernel
    window: int  # tokens: the local window (and slash width) of this group


def _gen(device, *parts: int) -> torch.Generator:
    seed = 0
    for p in parts:
        seed = (seed * 1_000_003 + int(p) + 1) % (2 ** 61 - 1)
    return torch.Generator(device=device).manual_seed(seed)


def _uniform(n: int, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device, dtype=torch.float64)


def make_template(spec: PlantedSpec, group: int, n: int, device) -> Template:
    """Seeded positions for KV group ``group`` at length ``n`` (fractions of n, so prefixes agree)."""
    g = _gen(device, spec.seed, 7, group)
    runs = max(1, round(2 * math.log2(max(n, 1024) / 1024)) + 1)
    starts = (_uniform(runs, g, device) * (n - 16)).long().clamp(min=1)
    lengths = (1 + 15 * _uniform(runs, g, device) ** 2).long()
    offs = torch.arange(16, device=device)
    stripes = (starts[:, None] + offs[None, :])[offs[None, :] < lengths[:, None]].clamp(max=n - 1)
    slash_tokens = 2.0 ** (6 + 7 * _uniform(3, g, device))  # 64 .. 8192 tokens
    slashes = slash_tokens.long().clamp(max=max(n // 2, 1))
    r = max(2, n // 1024)
    keys = (_uniform(r, g, device) * (n - 1)).long()
    start = keys + 1 + ((n - 1 - keys) * _uniform(r, g, device)).long()
    length = (32 * 16 ** _uniform(r, g, device)).long()  # 32 .. 512 tokens
    spans = torch.stack([start.clamp(max=n - 1), (start + length).clamp(max=n)], dim=-1)
    window = WINDOWS[group % len(WINDOWS)]
    log_f = math.log(0.4 / window) + math.log(2.5 / 0.4) * _uniform(REL_PAIRS, g, device)
    return Template(stripes.unique(), slashes, keys, spans, log_f.exp(), window)


def _angles(n: int, freqs: torch.Tensor) -> torch.Tensor:
    """Angles ``w_m * i`` ``[N, P]`` (float64)."""
    pos = torch.arange(n, device=freqs.device, dtype=torch.float64)
    return pos[:, None] * freqs[None, :]


def _rel_query(n: int, local: float, slash: float, t: Template) -> torch.Tensor:
    """Relative-position part of one query head ``[N, 2P]`` (float32): logit ``local`` near the
    diagonal and ``slash`` near each slash offset (kernel ``mean_m cos(w_m d)``)."""
    angles = _angles(n, t.freqs)
    q = (local / REL_PAIRS) * torch.cat([angles.cos(), angles.sin()], dim=-1)
    if slash > 0:
        for delta in t.slashes.tolist():
            shifted = angles - t.freqs[None, :] * delta
            q += (slash / REL_PAIRS) * torch.cat([shifted.cos(), shifted.sin()], dim=-1)
    return q.float()


def _rel_key(n: int, t: Template) -> torch.Tensor:
    angles = _angles(n, t.freqs)
    return torch.cat([angles.cos(), angles.sin()], dim=-1).float()  # [N, 2P]


def _group_keys(spec: PlantedSpec, t: Template, n: int, layer: int, group: int, device) -> torch.Tensor:
    """One KV head's keys ``[N, D]`` in logit units (query side carries the strengths)."""
    d_content = spec.head_dim - CONTENT_START
    k = torch.zeros(n, spec.head_dim, device=device)
    k[:, :CONTENT_START - 2] = _rel_key(n, t)
    k[0, SINK_DIM] = 1.0
    k[t.stripes, STRIPE_DIM] = 1.0
    g = _gen(device, spec.seed, 11, layer, group)
    k[:, CONTENT_START:] = torch.randn(n, d_content, generator=g, device=device) / d_content ** 0.25
    return k


def _head_query(spec: PlantedSpec, t: Template, k: torch.Tensor, style: Style, layer: int, head: int,
                device) -> torch.Tensor:
    """One query head ``[N, D]`` in logit units: ``q_i . k_j`` is the planted logit."""
    n = k.shape[0]
    s = STYLES[style]
    g = _gen(device, spec.seed, 13, layer, head)
    jitter = float(0.85 + 0.3 * torch.rand(1, generator=g, device=device))
    boost = math.log(n / REF_LENGTH)  # keeps each style's background share independent of N
    amp = lambda a: (a + boost) * jitter if a > 0 else 0.0  # noqa: E731
    d_content = spec.head_dim - CONTENT_START
    q = torch.zeros(n, spec.head_dim, device=device)
    q[:, :CONTENT_START - 2] = _rel_query(n, amp(s.local), amp(s.slash), t)
    q[:, SINK_DIM] = amp(s.sink)
    q[:, STRIPE_DIM] = amp(s.stripe) * (0.7 + 0.6 * torch.rand(n, generator=g, device=device))
    q[:, CONTENT_START:] = torch.randn(n, d_content, generator=g, device=device) * s.noise / d_content ** 0.25
    if s.retrieval > 0:
        for key, (lo, hi) in zip(t.keys.tolist(), t.spans.tolist()):
            direction = k[key, CONTENT_START:]
            q[lo:hi, CONTENT_START:] += amp(s.retrieval) * direction / direction.square().sum()
    return q


def planted_layer(spec: PlantedSpec, n: int, layer: int = 0, device=None,
                  dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q ``[B, H, N, D]`` and k, v ``[B, H_kv, N, D]`` of one layer, for the default attention
    scale ``D ** -0.5`` (the factor ``sqrt(D)`` is folded into q)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    group_size = spec.heads // spec.kv_heads
    qs, ks = [], []
    for grp in range(spec.kv_heads):
        t = make_template(spec, grp, n, device)
        k = _group_keys(spec, t, n, layer, grp, device)
        ks.append(k)
        for j, style in enumerate(spec.layout[grp]):
            qs.append(_head_query(spec, t, k, style, layer, grp * group_size + j, device))
    q = torch.stack(qs) * spec.head_dim ** 0.5  # [H, N, D]
    k = torch.stack(ks)  # [H_kv, N, D]
    gv = _gen(device, spec.seed, 17, layer)
    v = torch.randn(spec.kv_heads, n, spec.head_dim, generator=gv, device=device)
    expand = lambda x: x[None].expand(spec.batch, *x.shape).to(dtype).contiguous()  # noqa: E731
    return expand(q), expand(k), expand(v)


def planted_groups(spec: PlantedSpec) -> list[list[int]]:
    """Query heads of each shareable planted group (same KV group and style; diffuse excluded)."""
    group_size = spec.heads // spec.kv_heads
    groups: dict[tuple[int, Style], list[int]] = {}
    for h, style in enumerate(spec.styles):
        if style is not Style.DIFFUSE:
            groups.setdefault((h // group_size, style), []).append(h)
    return [heads for heads in groups.values() if len(heads) > 1]


def planted_cluster_table(spec: PlantedSpec, num_layers: int) -> torch.Tensor:
    """``[L, H]`` int64 cluster table for ``SharingState``: each planted group is one shared
    cluster spanning all layers (what an offline lookup would find); -1 for unshared heads."""
    table = torch.full((num_layers, spec.heads), -1, dtype=torch.long)
    for cid, heads in enumerate(planted_groups(spec)):
        table[:, heads] = cid
    return table


def planted_densities(q: torch.Tensor, k: torch.Tensor, gamma: float = DEFAULT_GAMMA,
                      block_size: int = DEFAULT_BLOCK_SIZE, scale: float | None = None) -> torch.Tensor:
    """Per-head share of causal blocks needed to cover ``gamma`` of each query-block row's exact
    attention mass ``[B, H]`` (the paper's pattern density; uses ``kernels.block_mass``)."""
    from ... import kernels

    mass = kernels.block_mass(q, k, block_size, scale)  # [B, H, nqb, nkb]
    return density(coverage_mask(mass, gamma))


def style_summary(spec: PlantedSpec, densities: torch.Tensor) -> dict[str, float]:
    """Mean density per style over the heads of a ``[B, H]`` density tensor."""
    d = densities.float().mean(0).cpu()
    out = {}
    for style in Style:
        idx = [h for h, s in enumerate(spec.styles) if s is style]
        if idx:
            out[style.value] = float(d[idx].mean())
    return out


def causal_blocks(n: int, block_size: int = DEFAULT_BLOCK_SIZE) -> int:
    nb = num_blocks(n, block_size)
    return nb * (nb + 1) // 2
