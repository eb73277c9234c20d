"""What a model family hands our attention functions beyond q, k, v and the scale, and what we do with it.

Families pass extra keyword arguments to the attention interface: ``sliding_window`` (Mistral,
Gemma2/3's local layers, Qwen2/3 with ``use_sliding_window``), ``softcap`` (Gemma2's logit
soft-capping), ``s_aux``/``sinks`` (sink logits). ``scaling`` other than 1/sqrt(d) (Gemma's
``query_pre_attn_scalar``) reaches the kernels as their scale and needs nothing here.

* ``dense_reason`` names the first feature of a layer call the sparse path does not honour; such a
  layer runs ``family_dense`` (the family's own attention with every keyword) and its trace keeps
  the reason.
* ``feature_maps`` is capture's exact torch path for layers whose attention distribution a
  sliding window or soft-capping changes (and for head dims the Triton kernels do not take).
"""
from __future__ import annotations

import sys

import torch

from ... import kernels
from ...kernels.limits import HEAD_DIMS, ConfigError, one_of
from ...kernels.reference import block_mass_from_probs, causal_token_mask, expand_kv

SINK_KWARGS = ("s_aux", "sinks")


def _sinks(kwargs: dict):
    return next((kwargs[name] for name in SINK_KWARGS if kwargs.get(name) is not None), None)


def window_applies(kwargs: dict, num_keys: int) -> int | None:
    """The layer's sliding window if it hides some key from some query (``num_keys > window``)."""
    window = kwargs.get("sliding_window")
    return window if window is not None and num_keys > window else None


def triton_head_dim_unsupported(query: torch.Tensor) -> bool:
    """Whether this call would reach the Triton kernels with a head dim they do not compile for."""
    return query.shape[-1] not in HEAD_DIMS and kernels.select_backend(query).value == "triton"


def dense_reason(query: torch.Tensor, key: torch.Tensor, kwargs: dict) -> str | None:
    """Why this layer call must run the family's dense attention instead of the sparse path."""
    window = window_applies(kwargs, key.shape[2])
    if window is not None:
        return f"sliding window {window}"
    if kwargs.get("softcap") is not None:
        return f"logit soft-cap {kwargs['softcap']:g}"
    if _sinks(kwargs) is not None:
        return "attention sinks (s_aux)"
    if triton_head_dim_unsupported(query):
        return f"head dim {query.shape[-1]} (the Triton kernels take {one_of(HEAD_DIMS)})"
    return None


def family_dense(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The family's own dense attention: transformers' SDPA function, or, where SDPA would drop a
    keyword (soft-capping, sinks), the eager function of the module's modeling file with an additive
    mask. Returns what the attention interface returns: ``(out [B, N, H, D], weights or None)``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if kwargs.get("softcap") is None and _sinks(kwargs) is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      scaling=scaling, dropout=dropout, **kwargs)
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise ConfigError(f"{type(module).__name__}: soft-capping or sinks without an eager attention function")
    if attention_mask is None:
        attention_mask = causal_token_mask(query.shape[2], key.shape[2], query.device)[None, None]
    if attention_mask.dtype == torch.bool:
        low = torch.finfo(query.dtype).min
        attention_mask = torch.where(attention_mask, 0.0, low).to(query.dtype)
    return eager(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)


def refuse_for_capture(kwargs: dict) -> None:
    """Capture's maps cannot describe sink logits (rows would not sum to 1): one line naming it."""
    if _sinks(kwargs) is not None:
        raise ConfigError("capture: attention sinks (s_aux) are not supported: the maps would not be "
                          "row-stochastic")


def needs_feature_maps(query: torch.Tensor, key: torch.Tensor, kwargs: dict) -> bool:
    return (kwargs.get("softcap") is not None or window_applies(kwargs, key.shape[2]) is not None
            or triton_head_dim_unsupported(query))


def _probs(q, kx, lo: int, hi: int, scale: float, softcap, window, nk: int, nq: int):
    """fp32 probabilities of query rows ``lo:hi`` ``[B, H, hi-lo, Nk]`` with the family's features."""
    logits = torch.matmul(q[:, :, lo:hi].float(), kx) * scale
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    pos = torch.arange(lo, hi, device=q.device)[:, None] + (nk - nq)  # absolute query positions
    keys = torch.arange(nk, device=q.device)[None, :]
    hidden = keys > pos
    if window is not None:
        hidden |= keys <= pos - window
    return torch.softmax(logits.masked_fill(hidden, float("-inf")), dim=-1)


def feature_maps(q, k, block_size: int, scaling, chunk_size: int, kwargs: dict):
    """Capture's block-mass map ``[B, H, nqb, nkb]`` and probe profiles ``(vertical, slash)``
    ``[B, H, Nk]`` (the last ``min(block_size, Nq)`` queries), exact for soft-capping and sliding
    windows; fp32, extra memory ``O(B x H x chunk x Nk)``."""
    nq, nk = q.shape[2], k.shape[2]
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    softcap, window = kwargs.get("softcap"), window_applies(kwargs, nk)
    kx = expand_kv(k, q.shape[1]).float().transpose(-1, -2)  # [B, H, D, Nk]
    chunk = max(block_size, (chunk_size // block_size) * block_size)
    mass = torch.cat([block_mass_from_probs(_probs(q, kx, lo, min(lo + chunk, nq), scale, softcap, window, nk, nq),
                                            block_size) for lo in range(0, nq, chunk)], dim=2)
    m = min(block_size, nq)
    probs = _probs(q, kx, nq - m, nq, scale, softcap, window, nk, nq)  # [B, H, m, Nk]
    offsets = torch.arange(nk - m, nk, device=q.device)[:, None] - torch.arange(nk, device=q.device)[None, :]
    idx = offsets.clamp(min=0).expand(*probs.shape[:2], m, nk)
    slash = torch.zeros_like(probs).scatter_add_(-1, idx, probs * (offsets >= 0)).sum(dim=2) / m
    return mass, probs.mean(dim=2), slash
