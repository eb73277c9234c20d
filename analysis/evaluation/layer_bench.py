"""Whole-layer sparse prefill against dense cuDNN on planted-structure inputs (``bench prefill``).

For each length N one planted pair of layers (``analysis.planted``: layer 0 and layer 1 share the
planted groups) is built on the GPU. Timed, per method, is the WHOLE per-layer pipeline of
``SparsePrefill.attend``: probe, estimation kernels, batched decisions, block layout (with its host
sync) and the block-sparse kernel. Dense is cuDNN SDPA (``SDPBackend.CUDNN_ATTENTION``) on K/V
expanded to the query heads beforehand (expansion not timed). SharePrefill is timed twice: on
layer 0, where each planted cluster's first head is pivotal and runs dense with its block-mass
map, and on layer 1, where the clusters' heads share the pivotal patterns (the steady state of
every later layer). Fidelity comes from a separate untimed run of the same layer: relative error
of the output against dense, mean density, mean recall (true attention mass inside the kept
blocks) and the share of heads per decision.

``kernels``: the attention backends to time each method with (``kernels.use_backend``: triton,
flash, auto); every result names its kernel, and the crossover is found per (method, layer, kernel).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from ... import kernels as _kernels
from ..method.method_config import DEFAULT_GAMMA, Decision, MethodName, make_config
from ..method.sharing import SharingState
from ..method.sparse_prefill import SparsePrefill
from .planted import PlantedSpec, planted_cluster_table, planted_layer

SPARSE_METHODS = (MethodName.VERTICAL_SLASH, MethodName.FLEXPREFILL, MethodName.SHAREPREFILL)
Timer = Callable[[Callable[[], object]], float]


@dataclass
class LayerResult:
    """One method on one layer at one length."""

    n: int
    method: str
    layer: str  # "any" (no cross-layer state), "pivotal" (SharePrefill layer 0), "shared" (layer 1)
    ms: float
    dense_ms: float
    density: float = float("nan")
    rel_error: float = float("nan")
    recall: float = float("nan")
    decisions: dict = field(default_factory=dict)
    kernel: str = "auto"  # the attention backend asked for (kernels.use_backend)

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.ms

    def to_json(self) -> dict:
        return {**asdict(self), "speedup": self.speedup}


class LayerInputs:
    """Two planted layers at one length, their dense cuDNN outputs and the dense timing."""

    def __init__(self, spec: PlantedSpec, n: int, device, timer: Timer):
        self.n = n
        self.spec = spec
        self.scale = spec.head_dim ** -0.5
        self.layers = [planted_layer(spec, n, layer, device) for layer in (0, 1)]
        self.dense_out = [dense_cudnn(q, k, v, self.scale) for q, k, v in self.layers]
        q, k, v = self.layers[0]
        group = q.shape[1] // k.shape[1]
        k_rep, v_rep = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        self.dense_ms = timer(lambda: _sdpa_cudnn(q, k_rep, v_rep, self.scale))  # noqa: F821 - ruff misreads the later del
        del k_rep, v_rep


def _sdpa_cudnn(q, k, v, scale):
    """Causal SDPA on K/V already expanded to q's heads: cuDNN on CUDA, torch's default else."""
    sdpa = torch.nn.functional.scaled_dot_product_attention
    if not q.is_cuda:
        return sdpa(q, k, v, is_causal=True, scale=scale)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return sdpa(q, k, v, is_causal=True, scale=scale)


def dense_cudnn(q, k, v, scale) -> torch.Tensor:
    """Dense causal attention, K/V expanded to q's heads (cuDNN on CUDA)."""
    group = q.shape[1] // k.shape[1]
    return _sdpa_cudnn(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), scale)


def config_for(method: MethodName, gamma: float, exact_tail: int = 0):
    # dense_below=0: measure the sparse path at every N; exact_tail applies to the probe-based methods
    return make_config(method, gamma=gamma, dense_below=0, exact_tail=exact_tail)


def _fidelity(result: LayerResult, out: torch.Tensor, ref: torch.Tensor, trace) -> LayerResult:
    diff = (out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12)
    result.rel_error = float(diff)
    result.density = float(trace.density.float().mean())
    if trace.recall is not None:
        result.recall = float(trace.recall.float().mean())
    total = trace.decision.numel()
    result.decisions = {d.label: float((trace.decision == int(d)).sum()) / total for d in Decision
                        if bool((trace.decision == int(d)).any())}
    return result


def bench_method(inputs: LayerInputs, method: MethodName, gamma: float, timer: Timer,
                 fidelity: bool = True, exact_tail: int = 0, use_graphs: bool = True) -> list[LayerResult]:
    """Time one sparse method on the planted layers (two results for SharePrefill)."""
    cfg = config_for(method, gamma, exact_tail)
    if method is not MethodName.SHAREPREFILL:
        q, k, v = inputs.layers[0]
        runner = SparsePrefill(method, cfg, use_graphs=use_graphs)
        res = LayerResult(inputs.n, method.value, "any", timer(lambda: runner.attend(0, q, k, v, inputs.scale)),
                          inputs.dense_ms)
        if fidelity:
            out, trace = SparsePrefill(method, cfg, measure_recall=True).attend(0, q, k, v, inputs.scale)
            _fidelity(res, out, inputs.dense_out[0], trace)
        return [res]
    return _bench_share(inputs, cfg, timer, fidelity, use_graphs)


def _bench_share(inputs: LayerInputs, cfg, timer: Timer, fidelity: bool, use_graphs: bool) -> list[LayerResult]:
    table = planted_cluster_table(inputs.spec, 2)
    runner = SparsePrefill(MethodName.SHAREPREFILL, cfg, SharingState(table), use_graphs=use_graphs)
    (q0, k0, v0), (q1, k1, v1) = inputs.layers
    pivotal = LayerResult(inputs.n, MethodName.SHAREPREFILL.value, "pivotal",
                          timer(lambda: runner.attend(0, q0, k0, v0, inputs.scale)), inputs.dense_ms)
    runner.attend(0, q0, k0, v0, inputs.scale)  # layer 1 reads the pivotal patterns of this pass

    def shared_layer():  # every repeat is layer 1 of the same pass (not a new pass that resets)
        runner.continue_after(0)
        return runner.attend(1, q1, k1, v1, inputs.scale)

    shared = LayerResult(inputs.n, MethodName.SHAREPREFILL.value, "shared", timer(shared_layer), inputs.dense_ms)
    if fidelity:
        check = SparsePrefill(MethodName.SHAREPREFILL, cfg, SharingState(table), measure_recall=True)
        for res, layer, (q, k, v) in ((pivotal, 0, inputs.layers[0]), (shared, 1, inputs.layers[1])):
            out, trace = check.attend(layer, q, k, v, inputs.scale)
            _fidelity(res, out, inputs.dense_out[layer], trace)
    return [pivotal, shared]


def bench_length(spec: PlantedSpec, n: int, device, timer: Timer, gamma: float = DEFAULT_GAMMA,
                 methods=SPARSE_METHODS, fidelity: bool = True, log=print,
                 exact_tail: int = 0, use_graphs: bool = True,
                 kernels: tuple[str, ...] = ("auto",)) -> tuple[float, list[LayerResult]]:
    """Dense time and every method's results at length ``n``, once per attention backend."""
    inputs = LayerInputs(spec, n, device, timer)
    log(f"n={n}: dense cuDNN {inputs.dense_ms:.3f} ms")
    rows = []
    for kernel in kernels:
        for method in methods:
            with _kernels.use_backend(kernel):
                results = bench_method(inputs, MethodName(method), gamma, timer, fidelity, exact_tail, use_graphs)
            for res in results:
                res.kernel = kernel
                log(f"  {res.method:<15} {res.layer:<8} {kernel:<7} {res.ms:8.3f} ms  x{res.speedup:5.2f}  "
                    f"density {res.density:.3f}  rel.err {res.rel_error:.4f}  recall {res.recall:.4f}")
                rows.append(res)
    dense_ms = inputs.dense_ms
    del inputs
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return dense_ms, rows


def crossover(rows: list[LayerResult], lengths: list[int]) -> dict[str, int | None]:
    """Per method (and SharePrefill layer kind): the shortest N from which the whole layer is
    faster than dense at every measured longer N too (None: never within ``lengths``)."""
    out: dict[str, int | None] = {}
    keys = sorted({(r.method, r.layer, r.kernel) for r in rows})
    several = len({r.kernel for r in rows}) > 1
    for method, layer, kernel in keys:
        faster = {r.n: r.ms < r.dense_ms for r in rows if (r.method, r.layer, r.kernel) == (method, layer, kernel)}
        name = (method if layer == "any" else f"{method} ({layer})") + (f" [{kernel}]" if several else "")
        out[name] = None
        for n in sorted(lengths, reverse=True):
            if not faster.get(n, False):
                break
            out[name] = n
    return out


def recommended_dense_below(cross: dict[str, int | None], lengths: list[int]) -> int | None:
    """The smallest ``dense_below`` that keeps every method (steady-state layers) never slower
    than dense on the measured lengths: the largest per-method crossover."""
    steady = [v for k, v in cross.items() if "(pivotal)" not in k]
    if any(v is None for v in steady):
        return None
    return max(steady) if steady else None


def results_table(rows: list[LayerResult]) -> list[str]:
    """Markdown rows: one per (N, method, layer)."""
    lines = ["| N | method | layer | kernel | ms | dense cuDNN ms | speedup | density | rel. error | recall |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.n} | {r.method} | {r.layer} | {r.kernel} | {r.ms:.3f} | {r.dense_ms:.3f} | "
                     f"{r.speedup:.2f} | {r.density:.3f} | {r.rel_error:.4f} | {r.recall:.4f} |")
    return lines
