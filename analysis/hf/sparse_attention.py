"""The sparse methods as transformers attention functions.

Importing ``sharedattn.analysis.hf`` registers one attention function per method under its name
(``dense``, ``a-shape``, ``vertical-slash``, ``flexprefill``, ``shareprefill``), each with the
``sdpa_mask`` builder, so ``model.set_attn_implementation("shareprefill")`` works. Settings (config,
lookup) and the per-head trace live in a ``PrefillSession``; without an active session a method
runs with its paper defaults and no lookup. Decoding (one query) always uses the model's dense
attention, and so does a layer call with a family feature the sparse path does not honour (a sliding
window shorter than the keys, soft-capping, sinks, a head dim the Triton kernels do not take:
family_attention.py); its trace says why.

The config's ``kernel`` (auto, triton, flash) is applied around each layer call with
``kernels.use_backend`` (auto leaves the default rule, or an outer choice, in force), and the
attention backends each layer ran are counted into ``PrefillSession.kernel_counts``
(``kernels.record_backends``); a layer that called no block-sparse kernel ran dense SDPA.
"""
from __future__ import annotations

import contextlib
import contextvars
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from ... import kernels
from ...kernels.device import on_device
from ...kernels.reference import causal_token_mask
from ..method.method_config import KernelChoice, MethodConfig, MethodName, make_config
from ..method.sharing import SharingState, cluster_table
from ..method.sparse_prefill import LayerTrace, SparsePrefill
from .family_attention import dense_reason, family_dense


@dataclass
class PrefillSession:
    """Settings and results of sparse prefill on one model (one or more forward passes)."""

    method: MethodName
    config: MethodConfig
    num_layers: int
    num_heads: int
    lookup: object = None  # analysis.lookup.Lookup or None
    compare_dense: bool = False  # also run dense on the same inputs and record each layer's error
    measure_recall: bool = False  # record each head's true attention mass inside its kept blocks
    keep_masks: bool = False  # keep each head's block mask (CPU) in the trace, for figures
    use_graphs: bool = True  # record each length's layer step as a CUDA graph (on CUDA)
    whole_layer: bool = True  # on CUDA with the Triton kernel: each layer one step, no host sync
    traces: dict = field(default_factory=dict)  # layer -> LayerTrace (last prefill chunk)
    layer_errors: dict = field(default_factory=dict)  # layer -> relative error vs dense
    attention_seconds: float = 0.0
    kernel_counts: dict = field(default_factory=dict)  # layer -> {backend: attention calls}, all passes
    _runners: dict = field(default_factory=dict)  # batch element (or None) -> SparsePrefill
    _graph_base: dict = field(default_factory=dict)  # batch element -> runner's graph counts on first use
    _events: list = field(default_factory=list)

    def runner(self, key=None) -> SparsePrefill:
        if key not in self._runners:
            table = None
            if self.method is MethodName.SHAREPREFILL:
                table = cluster_table(self.lookup, self.num_layers, self.num_heads)
            options = (self.method, self.config, self.measure_recall, self.keep_masks, self.use_graphs,
                       self.whole_layer, key,
                       None if table is None else (tuple(table.shape), table.numpy().tobytes()))
            runner = _RUNNERS.pop(options, None)
            if runner is None:
                sharing = SharingState(table) if table is not None else None
                runner = SparsePrefill(self.method, self.config, sharing, self.measure_recall,
                                       self.keep_masks, self.use_graphs, self.whole_layer)
            _RUNNERS[options] = runner  # most recently used last
            while len(_RUNNERS) > _RUNNERS_KEPT:
                _RUNNERS.popitem(last=False)
            self._runners[key] = runner
            self._graph_base[key] = runner.graph_counts()
        return self._runners[key]

    def graph_counts(self) -> dict:
        """Layer steps (whole layers or decision steps) recorded as CUDA graphs and replays of them,
        by this session's runners."""
        counts = [tuple(now - base for now, base in zip(r.graph_counts(), self._graph_base[k]))
                  for k, r in self._runners.items()]
        return {"recorded": sum(c for c, _ in counts), "replayed": sum(r for _, r in counts)}

    def kernel_scope(self):
        """The config's kernel choice, for one layer call (auto: whatever is already in force)."""
        kernel = KernelChoice(getattr(self.config, "kernel", KernelChoice.AUTO))
        return contextlib.nullcontext() if kernel is KernelChoice.AUTO else kernels.use_backend(kernel.value)

    def note_kernels(self, layer: int, counts) -> None:
        total = self.kernel_counts.setdefault(layer, {})
        for name, n in (counts or {"sdpa": 1}).items():
            total[name] = total.get(name, 0) + n

    def layer_kernels(self, num_layers: int) -> list[str]:
        """Per layer, the backend(s) its attention ran on: ``flash``, ``triton``, ``reference``,
        several joined by ``+``, or ``sdpa`` (dense: no block-sparse call); ``-`` if never called."""
        return ["+".join(sorted(self.kernel_counts[i])) if i in self.kernel_counts else "-"
                for i in range(num_layers)]

    def finish_timing(self) -> None:
        """Fold pending CUDA event pairs into ``attention_seconds`` (one sync)."""
        if self._events:
            for _, end in self._events:  # each on its layer's GPU (a sharded model has several)
                end.synchronize()
            self.attention_seconds += sum(a.elapsed_time(b) for a, b in self._events) / 1000
            self._events.clear()


# Runners outlive a session: the next prefill with the same method, config, lookup and options
# replays the decision graphs an earlier one recorded instead of recording them again (on the H200
# with Qwen2.5-Coder-0.5B at 32K, recording cost 5-17 ms of every prefill's first layer). Their
# sharing state is reset at layer 0 of every forward pass, so sequential sessions can share one.
_RUNNERS: OrderedDict = OrderedDict()
_RUNNERS_KEPT = 4

_SESSION: contextvars.ContextVar[PrefillSession | None] = contextvars.ContextVar("prefill_session", default=None)
_DEFAULT_SESSIONS: dict = {}


@contextlib.contextmanager
def prefill_session(session: PrefillSession):
    token = _SESSION.set(session)
    try:
        yield session
    finally:
        session.finish_timing()
        _SESSION.reset(token)


def _session_for(method: MethodName, module) -> PrefillSession:
    active = _SESSION.get()
    if active is not None:
        return active
    cfg = module.config
    key = (method, id(cfg))
    if key not in _DEFAULT_SESSIONS:
        _DEFAULT_SESSIONS[key] = PrefillSession(method, make_config(method), cfg.num_hidden_layers,
                                                cfg.num_attention_heads)
    return _DEFAULT_SESSIONS[key]


def _key_spans(mask: torch.Tensor, nq: int, nk: int):
    """From a bool mask ``[B, 1, Nq, Nk]``: None if it is plain causal; else per batch element the
    contiguous valid key span ``(start, end)``, or False if some element is not one span or the
    mask is more than causal plus padding (a sliding window, say)."""
    if mask.dtype != torch.bool:
        mask = mask == 0  # additive float mask: 0 where attended
    causal = causal_token_mask(nq, nk, mask.device)
    if bool((mask[:, 0] == causal).all()):
        return None
    valid = mask[:, 0].any(dim=1)  # [B, Nk]: keys some query sees
    if not bool((mask[:, 0] == (causal & valid[:, None, :])).all()):
        return False
    spans = []
    for row in valid.tolist():
        idx = [i for i, ok in enumerate(row) if ok]
        if not idx or idx[-1] - idx[0] + 1 != len(idx):
            return False
        spans.append((idx[0], idx[-1] + 1))
    return spans


def _attend_padded(session, layer, q, k, v, scale, spans):
    """Batch with padding: each element runs on its own valid span; padded query rows get zeros."""
    out = torch.zeros_like(q)
    traces = []
    offset = k.shape[2] - q.shape[2]
    for b, (start, end) in enumerate(spans):
        q_lo, q_hi = max(start - offset, 0), end - offset
        o, t = session.runner(b).attend(layer, q[b:b + 1, :, q_lo:q_hi], k[b:b + 1, :, start:end],
                                        v[b:b + 1, :, start:end], scale)
        out[b:b + 1, :, q_lo:q_hi] = o
        traces.append(t)
    merged = LayerTrace(layer, *(torch.cat([getattr(t, f) for t in traces]) for f in
                                 ("decision", "density", "coverage", "source")))
    if all(t.recall is not None for t in traces):
        merged.recall = torch.cat([t.recall for t in traces])
    return out, merged


def _dense_reference(q, k, v, attention_mask, scale):
    mask = attention_mask if attention_mask is not None else causal_token_mask(q.shape[2], k.shape[2], q.device)
    return torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])


def _timed(session: PrefillSession, fn, device: torch.device):
    """``fn()``, its time added to the session's attention time (CUDA events on ``device``, the
    layer's own GPU when the model is sharded)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        with on_device(device):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            result = fn()
            end.record()
        session._events.append((start, end))
        return result
    t0 = time.perf_counter()
    result = fn()
    session.attention_seconds += time.perf_counter() - t0
    return result


def _fall_back(session, module, reason, query, key, value, attention_mask, scaling, dropout, kwargs):
    """Run the family's own dense attention for this layer and record why in its trace."""
    out = _timed(session, lambda: family_dense(module, query, key, value, attention_mask,
                                               scaling=scaling, dropout=dropout, **kwargs), query.device)
    layer = module.layer_idx
    session.note_kernels(layer, None)
    session.traces[layer] = session.runner().dense_trace(layer, query, key, reason)
    if session.compare_dense:  # it is the model's dense attention
        session.layer_errors[layer] = torch.zeros((), device=query.device)
    return out


def make_attention_function(method: MethodName):
    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        if query.shape[2] == 1:  # decoding after prefill: the model's own dense attention
            return family_dense(module, query, key, value, attention_mask,
                                scaling=scaling, dropout=dropout, **kwargs)
        session = _session_for(method, module)
        layer = module.layer_idx
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        spans = None if attention_mask is None else _key_spans(attention_mask, query.shape[2], key.shape[2])
        reason = dense_reason(query, key, kwargs)
        if reason is None and spans is False:
            reason = "attention mask is not causal with padding"
        if reason is not None:
            return _fall_back(session, module, reason, query, key, value, attention_mask, scaling, dropout, kwargs)
        with session.kernel_scope(), kernels.record_backends() as ran:
            if spans is None:
                out, trace = _timed(session, lambda: session.runner().attend(layer, query, key, value, scale),
                                    query.device)
            else:
                out, trace = _timed(session, lambda: _attend_padded(session, layer, query, key, value, scale, spans),
                                    query.device)
        session.note_kernels(layer, ran)
        session.traces[layer] = trace
        if session.compare_dense:
            ref = _dense_reference(query, key, value, attention_mask, scale)
            err = (out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12)
            session.layer_errors[layer] = err
        return out.transpose(1, 2).contiguous(), None

    attention.__name__ = f"sharedattn_{method.value.replace('-', '_')}"
    return attention


def register_methods() -> list[str]:
    """Register every method with transformers (idempotent); returns the names."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    for method in MethodName:
        AttentionInterface.register(method.value, make_attention_function(method))
        AttentionMaskInterface.register(method.value, sdpa_mask)
    return [m.value for m in MethodName]
