"""Sparse prefill methods: their names, their frozen parameter sets (paper defaults), decisions.

Every method default is written once, here (a field default or a named constant); the analyses
and the CLI's help read them from here. The block sizes, the default block and ``ConfigError``
come from what the kernels can run (``kernels/limits.py``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from enum import Enum, IntEnum

from ...kernels.limits import BLOCK_SIZES, DEFAULT_BLOCK_SIZE, ConfigError, KernelChoice, check_block_size

__all__ = ["BLOCK_SIZES", "CONFIG_TYPES", "DEFAULT_BLOCK_SIZE", "DEFAULT_GAMMA", "SHORT_CONTEXT",
           "SHORT_CONTEXT_BLOCK_SIZE", "AShapeConfig", "ConfigError", "Decision", "DenseConfig", "FallbackRule",
           "FlexPrefillConfig", "KernelChoice", "MethodConfig", "MethodName", "SharePrefillConfig",
           "VerticalSlashConfig", "check_fraction", "check_gamma", "default_block_size", "make_config"]

# The paper's coverage target: the methods' budgets and the analyses' coverage masks alike.
DEFAULT_GAMMA = 0.95
# The default for models whose context is at most SHORT_CONTEXT tokens (SmolLM2 and the tiny
# random shapes): the smaller block.
SHORT_CONTEXT = 8192
SHORT_CONTEXT_BLOCK_SIZE = 64


def default_block_size(max_positions: int | None, block_size: int | None = None) -> int:
    """``block_size`` if given, else the default for a model with a context of ``max_positions``
    tokens (used by capture, prefill and compare alike)."""
    if block_size is not None:
        return block_size
    return SHORT_CONTEXT_BLOCK_SIZE if (max_positions or 0) <= SHORT_CONTEXT else DEFAULT_BLOCK_SIZE


class MethodName(str, Enum):
    DENSE = "dense"
    A_SHAPE = "a-shape"
    VERTICAL_SLASH = "vertical-slash"
    FLEXPREFILL = "flexprefill"
    SHAREPREFILL = "shareprefill"


class Decision(IntEnum):
    """What a head did in one forward pass (stored as int8 in traces)."""

    DENSE = 0  # dense attention (dense method, or a prompt below the crossover length)
    PIVOTAL = 1  # SharePrefill pivotal head: dense, and its exact pattern is kept for sharing
    SHARED = 2  # used its cluster's pivotal pattern (plus the minimum vertical-slash budget)
    QUERY_AWARE = 3  # pooled block estimate plus the minimum vertical-slash budget
    VERTICAL_SLASH = 4  # its own vertical-slash pattern
    A_SHAPE = 5  # sink + local window

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


def check_fraction(name: str, value: float, low_open: bool = True) -> float:
    """``value`` as a float if it lies in (0, 1] (``low_open``) or [0, 1]; else ``ConfigError``."""
    ok = (0.0 < float(value) <= 1.0) if low_open else (0.0 <= float(value) <= 1.0)
    if not ok:
        raise ConfigError(f"{name} must be in {'(0, 1]' if low_open else '[0, 1]'}, got {value}")
    return float(value)


def check_gamma(gamma: float) -> float:
    """A coverage target: in (0, 1] (the methods' budgets, the analyses' coverage masks)."""
    return check_fraction("gamma", gamma)


# Per method, the prompt length (keys) from which it runs sparse by default: the shortest length at
# which it measured faster than dense attention on both workloads of the H200: planted
# Llama-3.1-8B-shape layers (every steady-state method from 8K-12K; docs/benchmarks.md, "The whole
# layer as one step") and the real Qwen2.5-Coder-0.5B (density ~0.5). At 16K on Qwen vertical-slash
# and flexprefill ran 1.16x and 1.11x dense attention from session 8; SharePrefill 0.81x then (29
# pivotal heads), 1.02-1.03x from session 12 (4 pivotal heads, no map in layers without a shared
# cluster; TTFT 0.99-1.00x, two runs; benchmarks.md, "after session 12"), and 1.49x at 32K (TTFT
# 1.22x), so it too runs sparse from 16384: a 32000-token prompt on a 32K model no longer runs dense.
DENSE_BELOW = {MethodName.A_SHAPE: 16384, MethodName.VERTICAL_SLASH: 16384, MethodName.FLEXPREFILL: 16384,
               MethodName.SHAREPREFILL: 16384}


@dataclass(frozen=True)
class MethodConfig:
    """Parameters every method shares."""

    block_size: int = DEFAULT_BLOCK_SIZE  # tokens per block, queries and keys alike; one of BLOCK_SIZES
    # Prompts (keys) shorter than this run dense; each method's default is DENSE_BELOW's.
    dense_below: int = 32768
    # The attention kernel (kernels/backend.py): auto (flash-attn-4 where it measured faster and is
    # installed, else Triton; the torch twin on CPU), triton or flash. Applied around each layer
    # call by the transformers integration (analysis/hf/sparse_attention.py), not read by the method.
    kernel: KernelChoice = KernelChoice.AUTO

    def __post_init__(self):
        check_block_size(self.block_size)
        if self.dense_below < 0:
            raise ConfigError(f"dense_below must be >= 0, got {self.dense_below}")
        try:
            object.__setattr__(self, "kernel", KernelChoice(self.kernel))
        except ValueError:
            choices = ", ".join(c.value for c in KernelChoice)
            raise ConfigError(f"kernel must be one of {choices}, got {self.kernel!r}") from None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass(frozen=True)
class DenseConfig(MethodConfig):
    pass


@dataclass(frozen=True)
class AShapeConfig(MethodConfig):
    dense_below: int = DENSE_BELOW[MethodName.A_SHAPE]
    sink_tokens: int = 128  # attention sink at the start of the sequence
    local_tokens: int = 1024  # local window before (and including) the diagonal

    def __post_init__(self):
        super().__post_init__()
        if self.sink_tokens < 0 or self.local_tokens < 0:
            raise ConfigError("sink_tokens and local_tokens must be >= 0")


@dataclass(frozen=True)
class VerticalSlashConfig(MethodConfig):
    dense_below: int = DENSE_BELOW[MethodName.VERTICAL_SLASH]
    gamma: float = DEFAULT_GAMMA  # budgets: fewest pooled entries whose mass reaches gamma
    min_budget: int = 1024  # tokens; each budget is at least this
    vertical_tokens: int | None = None  # fixed vertical budget (tokens) instead of gamma
    slash_tokens: int | None = None  # fixed slash budget (tokens) instead of gamma
    # Ours, not the papers': the query blocks that hold the last ``exact_tail`` tokens attend to
    # every causal key block; those rows make the next-token logits. Off by default: on SmolLM2 the
    # density it costs buys less than the same density spent on gamma (docs/fidelity.md, "Exact tail").
    exact_tail: int = 0

    def __post_init__(self):
        super().__post_init__()
        check_gamma(self.gamma)
        if self.exact_tail < 0:
            raise ConfigError(f"exact_tail must be >= 0 tokens, got {self.exact_tail}")
        if self.min_budget < 0:
            raise ConfigError(f"min_budget must be >= 0, got {self.min_budget}")
        for name in ("vertical_tokens", "slash_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be positive, got {value}")


@dataclass(frozen=True)
class FlexPrefillConfig(VerticalSlashConfig):
    dense_below: int = DENSE_BELOW[MethodName.FLEXPREFILL]
    tau_qa: float = 0.1  # sqrt-JS distance below which a head counts as query-aware

    def __post_init__(self):
        super().__post_init__()
        check_fraction("tau_qa", self.tau_qa, low_open=False)


class FallbackRule(str, Enum):
    """When a cluster falls back to vertical-slash instead of sharing its pivotal's pattern."""

    COVERS = "covers"  # the paper: the pivotal's own vertical-slash mask covers tau_fb of its mass
    # Ours: ... and that mask keeps no more blocks than the pivotal's pattern, so falling back is
    # never the costlier choice (docs/method.md, step 4)
    COVERS_AND_SPARSER = "covers-and-sparser"


@dataclass(frozen=True)
class SharePrefillConfig(FlexPrefillConfig):
    dense_below: int = DENSE_BELOW[MethodName.SHAREPREFILL]
    tau_s: float = 0.5  # sqrt-JS distance (vertical and slash) under which a head shares
    tau_fb: float = 0.95  # pivotal's own vertical-slash covers this much: no sharing needed
    share_across_layer_only: bool = True  # a pivotal created in this layer is not shared in it
    # Ours, not the paper's: in the last query-block row a shared head also keeps the blocks its own
    # probe (exact attention of that row) needs to reach gamma; the pivotal's pattern was made from
    # another head's map, and the last row feeds the next-token logits (docs/fidelity.md).
    own_last_row: bool = True
    fallback: FallbackRule = FallbackRule.COVERS

    def __post_init__(self):
        super().__post_init__()
        check_fraction("tau_s", self.tau_s, low_open=False)
        check_fraction("tau_fb", self.tau_fb)
        try:
            object.__setattr__(self, "fallback", FallbackRule(self.fallback))
        except ValueError:
            choices = ", ".join(r.value for r in FallbackRule)
            raise ConfigError(f"fallback must be one of {choices}, got {self.fallback!r}") from None


CONFIG_TYPES: dict[MethodName, type[MethodConfig]] = {
    MethodName.DENSE: DenseConfig,
    MethodName.A_SHAPE: AShapeConfig,
    MethodName.VERTICAL_SLASH: VerticalSlashConfig,
    MethodName.FLEXPREFILL: FlexPrefillConfig,
    MethodName.SHAREPREFILL: SharePrefillConfig,
}


def dense_below_defaults() -> str:
    """The default ``dense_below`` per sparse method, in words (help texts)."""
    by_value: dict[int, list[str]] = {}
    for method, value in DENSE_BELOW.items():
        by_value.setdefault(value, []).append(method.value)
    return "; ".join(f"{value} for {', '.join(names)}" for value, names in sorted(by_value.items()))


def make_config(method: MethodName | str, **overrides) -> MethodConfig:
    """The method's config with the given fields changed (unknown or None values are ignored)."""
    cls = CONFIG_TYPES[MethodName(method)]
    known = set(cls.field_names())
    return cls(**{k: v for k, v in overrides.items() if k in known and v is not None})
