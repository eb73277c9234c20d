"""Run a prefill with one method on a loaded model: chunks, timing, trace, generation, fidelity."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..method.method_config import MethodConfig, MethodName
from ..method.trace import PrefillTrace
from .capture import attention_implementation
from .models import LoadedModel
from .sparse_attention import PrefillSession, prefill_session, register_methods


class AttentionInterfaceError(RuntimeError):
    """The model's attention does not go through transformers' attention interface."""


@dataclass
class PrefillRun:
    method: MethodName
    config: MethodConfig
    num_tokens: int
    logits: torch.Tensor  # [P, V] fp32 CPU: the last P positions (P = eval_positions)
    seconds: float  # wall time of the prefill (time to first token, without sampling)
    attention_seconds: float  # time inside the attention functions
    trace: PrefillTrace
    layer_errors: list[float] | None = None  # relative error of each layer's attention output
    generated: list[int] = field(default_factory=list)
    # decision steps recorded as CUDA graphs and replays of them, over all layers and chunks
    decision_graphs: dict = field(default_factory=lambda: {"recorded": 0, "replayed": 0})
    # per layer, the attention backend(s) it ran on over all chunks: flash, triton, reference, sdpa (dense)
    layer_kernels: list[str] = field(default_factory=list)


def cache_kwarg(model) -> str:
    """The name ``model.forward`` takes its KV cache under: ``cache`` from transformers 5.24 (where
    ``past_key_values`` still works but warns on every call), ``past_key_values`` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _sync(devices) -> None:
    """Wait for every GPU in ``devices`` (a sharded model's layers run on several)."""
    for device in devices:
        if device.type == "cuda":
            torch.cuda.synchronize(device)


def model_devices(model) -> list[torch.device]:
    """The devices a model's weights sit on (several when sharded with a device map)."""
    return sorted({p.device for p in model.parameters()}, key=str)


def run_prefill(loaded: LoadedModel, input_ids: list[int] | tuple[int, ...], method: MethodName,
                config: MethodConfig, lookup=None, *, compare_dense: bool = False,
                measure_recall: bool = False, keep_masks: bool = False,
                chunk: int | None = None, max_new_tokens: int = 0, eval_positions: int = 64,
                use_graphs: bool = True, whole_layer: bool = True) -> PrefillRun:
    """Prefill ``input_ids`` (batch 1) with ``method``; optionally in chunks over a growing cache,
    then greedy-decode ``max_new_tokens`` tokens with dense attention. ``use_graphs``: record the
    decision step as a CUDA graph per length (analysis/method/decision_graphs.py); ``whole_layer``:
    on CUDA with the Triton kernel, each layer without a host sync, its decisions and layout recorded
    (``SparsePrefill``; False: the synced path, where a layer keeping every block runs dense SDPA)."""
    from transformers import DynamicCache

    register_methods()
    model = loaded.model
    device = next(model.parameters()).device  # the embeddings' (a sharded model moves activations on)
    devices = model_devices(model)
    fp = loaded.fingerprint
    ids = torch.tensor([list(input_ids)], device=device)
    n = ids.shape[1]
    session = PrefillSession(MethodName(method), config, fp.num_layers, fp.num_heads, lookup, compare_dense,
                             measure_recall, keep_masks, use_graphs=use_graphs, whole_layer=whole_layer)
    step = chunk or n
    cache = DynamicCache() if (chunk or max_new_tokens) else None
    kv = {cache_kwarg(model): cache}
    chunk_traces, errors = [], []
    with attention_implementation(model, MethodName(method).value), prefill_session(session), torch.no_grad():
        _sync(devices)
        start = time.perf_counter()
        for lo in range(0, n, step):
            part = ids[:, lo:lo + step]
            keep = min(eval_positions, part.shape[1]) if lo + step >= n else 1
            out = model(input_ids=part, **kv, use_cache=cache is not None, logits_to_keep=keep)
            chunk_traces.append(dict(session.traces))
            errors.append(dict(session.layer_errors))
        _sync(devices)
        seconds = time.perf_counter() - start
        session.finish_timing()
        logits = out.logits[0].float()
        generated = _greedy(model, cache, logits[-1], max_new_tokens, device, loaded.tokenizer)
    if any(len(t) < fp.num_layers for t in chunk_traces):
        raise AttentionInterfaceError(
            f"{type(model).__name__} does not route every layer's attention through transformers' "
            "attention interface, so sparse methods cannot run on it")
    trace = PrefillTrace.from_layers(chunk_traces, fp.num_layers)
    layer_errors = None
    if compare_dense:
        layer_errors = [max(float(e[i]) for e in errors if i in e) for i in range(fp.num_layers)]
    return PrefillRun(MethodName(method), config, n, logits.cpu(), seconds, session.attention_seconds,
                      trace, layer_errors, generated, session.graph_counts(), session.layer_kernels(fp.num_layers))


def _greedy(model, cache, last_logits, steps: int, device, tokenizer) -> list[int]:
    tokens: list[int] = []
    eos = getattr(tokenizer, "eos_token_id", None)
    nxt = int(last_logits.argmax())
    for _ in range(steps):
        tokens.append(nxt)
        if nxt == eos:
            break
        out = model(input_ids=torch.tensor([[nxt]], device=device), **{cache_kwarg(model): cache}, use_cache=True)
        nxt = int(out.logits[0, -1].argmax())
    return tokens


@dataclass(frozen=True)
class Fidelity:
    kl_last: float  # KL(dense || method) of the final-position next-token distribution
    kl_mean: float  # mean over the evaluated positions
    top1_last: bool
    top1_agreement: float  # share of evaluated positions whose argmax agrees with dense
    positions: int


def logit_fidelity(dense: torch.Tensor, other: torch.Tensor) -> Fidelity:
    """Compare ``[P, V]`` logits of a method against dense on the same positions."""
    p = min(dense.shape[0], other.shape[0])
    d, o = dense[-p:].float().log_softmax(-1), other[-p:].float().log_softmax(-1)
    kl = (d.exp() * (d - o)).sum(-1).clamp_min(0)  # [P]
    agree = d.argmax(-1) == o.argmax(-1)
    return Fidelity(float(kl[-1]), float(kl.mean()), bool(agree[-1]), float(agree.float().mean()), p)
