"""Streamed attention capture through transformers' attention interface.

A custom attention function runs the model's normal attention (SDPA, or the family's eager function
where SDPA would drop soft-capping: family_attention.py), so the model's outputs are exactly those of
normal attention, and, beside it, reduces each layer's attention to block-mass maps and probe
profiles (honouring sliding windows and soft-capping), query chunk by query chunk: extra memory
is O(H x chunk x N).
"""
from __future__ import annotations

import contextlib
import contextvars
import platform
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from ... import kernels
from ...kernels.limits import DEFAULT_CHUNK_SIZE, ConfigError, check_block_size
from ..files.prompts import Prompt
from ..files.records import AttentionRecord, PromptInfo, RecordMeta
from ..method.method_config import default_block_size
from .family_attention import family_dense, feature_maps, needs_feature_maps, refuse_for_capture
from .models import LoadedModel, layer_windows_of

CAPTURE_ATTENTION = "sharedattn_capture"


@dataclass(frozen=True)
class CaptureConfig:
    block_size: int | None = None  # None: method_config.default_block_size of the model's context
    chunk_size: int = DEFAULT_CHUNK_SIZE  # query rows reduced at once; bounds the extra memory

    def __post_init__(self):
        if self.block_size is not None:
            check_block_size(self.block_size, "block size")
        if self.chunk_size < 1:
            raise ConfigError(f"chunk size must be positive, got {self.chunk_size}")

    def resolved_block_size(self, max_positions: int) -> int:
        return default_block_size(max_positions, self.block_size)


class _CaptureState:
    """Per-forward accumulation of every layer's reductions (CPU, float32)."""

    def __init__(self, num_layers: int, block_size: int, chunk_size: int, on_layer: Callable[[int], None]):
        self.block_size = block_size
        self.chunk_size = chunk_size
        self.on_layer = on_layer
        self.block_mass: list[torch.Tensor | None] = [None] * num_layers
        self.vertical: list[torch.Tensor | None] = [None] * num_layers
        self.slash: list[torch.Tensor | None] = [None] * num_layers

    def observe(self, layer: int, query: torch.Tensor, key: torch.Tensor, scaling: float | None,
                features: dict | None = None) -> None:
        """Reduce one layer; ``features``: the family's attention keywords (family_attention.py)."""
        if query.shape[0] != 1:
            raise ValueError("capture runs one prompt at a time (batch size 1)")
        features = features or {}
        if needs_feature_maps(query, key, features):  # soft-cap, a window hiding keys, odd head dim
            bm, vertical, slash = feature_maps(query, key, self.block_size, scaling, self.chunk_size, features)
        else:
            bm = kernels.block_mass(query, key, self.block_size, scaling, self.chunk_size)
            vertical, slash = kernels.last_block_profiles(query, key, self.block_size, scaling)
        self.block_mass[layer] = bm[0].float().cpu()
        self.vertical[layer] = vertical[0].float().cpu()
        self.slash[layer] = slash[0].float().cpu()
        self.on_layer(layer)

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        missing = [i for i, t in enumerate(self.block_mass) if t is None]
        if missing:
            raise RuntimeError(f"layers {missing} did not go through the attention interface")
        return torch.stack(self.block_mass), torch.stack(self.vertical), torch.stack(self.slash)


_STATE: contextvars.ContextVar[_CaptureState | None] = contextvars.ContextVar("capture_state", default=None)


def _capture_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    state = _STATE.get()
    if state is not None:
        refuse_for_capture(kwargs)
    out = family_dense(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    if state is not None:
        state.observe(module.layer_idx, query, key, scaling, kwargs)
    return out


def register_capture_attention() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(CAPTURE_ATTENTION, _capture_attention)
    AttentionMaskInterface.register(CAPTURE_ATTENTION, sdpa_mask)
    return CAPTURE_ATTENTION


@contextlib.contextmanager
def attention_implementation(model, name: str):
    """Switch a model's attention function for the duration of the block."""
    previous = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield model
    finally:
        model.set_attn_implementation(previous)


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import transformers

    try:
        ours = version("sharedattn")
    except PackageNotFoundError:
        ours = "unknown"
    return {"sharedattn": ours, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def capture_prompt(loaded: LoadedModel, prompt: Prompt, config: CaptureConfig,
                   on_layer: Callable[[int], None] = lambda layer: None) -> tuple[AttentionRecord, torch.Tensor]:
    """One forward pass over ``prompt``; returns the record and the final-position logits."""
    fp = loaded.fingerprint
    block_size = config.resolved_block_size(fp.max_positions)
    state = _CaptureState(fp.num_layers, block_size, config.chunk_size, on_layer)
    model = loaded.model
    device = next(model.parameters()).device
    ids = torch.tensor([prompt.input_ids], device=device)
    register_capture_attention()
    token = _STATE.set(state)
    try:
        with attention_implementation(model, CAPTURE_ATTENTION), torch.no_grad():
            logits = model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[0, -1]
    finally:
        _STATE.reset(token)
    block_mass, vertical, slash = state.stacked()
    meta = RecordMeta(
        model=fp,
        block_size=block_size,
        num_tokens=prompt.num_tokens,
        prompt=PromptInfo(prompt.name, prompt.sha256, prompt.preview()),
        packages=package_versions(),
        config={**asdict(config), "block_size": block_size,
                "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
                "device": device.type, "realistic_model": loaded.realistic},
        layer_windows=layer_windows_of(model.config),
    )
    return AttentionRecord(meta, block_mass, vertical, slash), logits.float().cpu()
