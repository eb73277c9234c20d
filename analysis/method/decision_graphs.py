"""CUDA graphs for the per-layer steps of sparse prefill that are many small launches.

Deciding what a layer keeps (the probe and estimation kernels, budgets, top-k, sharing tests,
masks, the layout draft) and recording SharePrefill's pivotal heads afterwards are many small
kernels whose cost on the GPU is their launches, not their work (docs/benchmarks.md, "Where the
fixed per-layer cost goes"). Every layer of one forward pass has the same geometry, so each step
is recorded once per geometry as a CUDA graph and replayed for the other layers: one launch
instead of hundreds.

``DecisionGraphs.run(key, fn, inputs)`` calls ``fn(**inputs)`` and returns its result: tensors in
a dict or a tuple (sparse prefill's ``DecisionPlan``, a NamedTuple whose optional fields may be
None), or None for a step that only writes state in place (``SharingState.record_pivotals``).
On CUDA, the first call for ``key`` copies ``inputs`` into static tensors, runs ``fn`` eagerly on
them (that warms every cache ``fn`` fills and compiles its Triton kernels for exactly the tensors
the recording will use) and then records it into a graph that reads those static copies; later
calls copy their inputs into them and replay. ``fn`` must depend only on ``inputs``, on tensors
whose storage stays put between calls (the sharing state) and on what ``key`` fixes; it must not
synchronise with the host. Returned tensors are the graph's own outputs: valid until the next
replay of the same key, so callers clone what they keep. A graph also reads the geometry tensors
that ``fn`` took from caches (``functools.lru_cache``, 64 entries each); ``capacity`` stays far
below that, so a kept graph's tensors are never evicted. A kept graph holds its static inputs and
its intermediates (its own memory pool) until it is evicted. If recording runs out of GPU
memory, the cache turns itself off and every later step runs eagerly.

A model sharded over several GPUs runs each layer on its own GPU: keys hold the inputs' devices,
and a step is recorded and replayed with its inputs' GPU current, on a side stream of that GPU.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch

from ...kernels.device import on_device

Inputs = dict[str, torch.Tensor]
Result = TypeVar("Result")  # what the step returns: tensors in a dict or a (named) tuple


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: Inputs
    outputs: object  # the step's result as recorded: its tensors are the graph's static outputs


class DecisionGraphs:
    """Recorded decision steps, keyed by geometry; the oldest goes when more than ``capacity``."""

    def __init__(self, enabled: bool = True, capacity: int = 4):
        self.enabled = enabled
        self.capacity = capacity
        self._graphs: OrderedDict = OrderedDict()
        self._streams: dict = {}  # device -> the side stream recordings on it are made on
        self.captures = 0
        self.replays = 0

    def run(self, key, fn: Callable[..., Result], inputs: Inputs, record: bool = True) -> Result:
        """``fn(**inputs)``, replayed from a graph where one was recorded for ``key``;
        ``record=False`` runs it eagerly (and records nothing)."""
        on_cuda = all(t.is_cuda for t in inputs.values())
        if not (self.enabled and record and on_cuda):
            return fn(**inputs)
        with on_device(next(iter(inputs.values()))):  # the inputs' GPU (layers may sit on several)
            return self._run_on_device(key, fn, inputs)

    def _run_on_device(self, key, fn: Callable[..., Result], inputs: Inputs) -> Result:
        entry = self._graphs.get(key)
        if entry is None:
            # static copies of the inputs (strides kept where dense), so that the eager call and the
            # recording launch the same specialisations of every kernel (none compiles in capture)
            static = {name: t.clone() for name, t in inputs.items()}
            out = fn(**static)  # eager: this layer's result, and the warm-up of the recording
            self._record(key, fn, static)
            return out
        self._graphs.move_to_end(key)
        for name, tensor in inputs.items():
            entry.inputs[name].copy_(tensor)
        entry.graph.replay()
        self.replays += 1
        return entry.outputs

    def _record(self, key, fn, static: Inputs) -> None:
        # CUDAGraph.capture_begin/end on a side stream, as torch.cuda.graph does, but without its
        # torch.cuda.empty_cache(): that would hand the forward pass's cached memory back to the
        # driver, and the rest of the pass would pay for fresh allocations.
        graph = torch.cuda.CUDAGraph()
        main = torch.cuda.current_stream()
        side = self._streams.get(main.device)
        if side is None:
            side = self._streams[main.device] = torch.cuda.Stream()
        side.wait_stream(main)  # the static copies and the eager call ran on the main stream
        try:
            with torch.cuda.stream(side):
                graph.capture_begin()
                try:
                    outputs = fn(**static)
                finally:
                    graph.capture_end()
        except torch.OutOfMemoryError:  # the step's intermediates do not fit twice: stay eager
            del graph, static
            self.enabled = False
            self.clear()
            return
        main.wait_stream(side)
        self._graphs[key] = _Graph(graph, static, outputs)
        self.captures += 1
        while len(self._graphs) > self.capacity:
            self._graphs.popitem(last=False)

    def clear(self) -> None:
        self._graphs.clear()
