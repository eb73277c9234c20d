"""One layer of sparse prefill: probe, per-head decisions, block layout, kernel (docs/method.md, steps 1-6).

``SparsePrefill.attend`` takes q ``[B, H, Nq, D]`` and k/v ``[B, H_kv, Nk, D]`` (GQA is read
through the group index by the kernels) and returns the output ``[B, H, Nq, D]`` plus a
``LayerTrace``. The probe, the estimation kernels and the decisions run as one step from q's probe
rows, its block means and k (batched tensor operations and Triton launches; on CUDA a CUDA graph
per geometry, fed copies of those, not of q); SharePrefill's recording of its pivotal heads after
the kernel is a second graph. The host syncs once per layer, to size the layout.

On CUDA, up to ``GRAPHS_UP_TO`` keys and where the attention runs on our Triton kernel, a layer
runs without a host sync instead (``whole_layer``, the default): the decision step and the layout
as one CUDA graph per geometry, replayed for every layer of that geometry, then the attention
launched on the layer's own q, k and v, and SharePrefill's record of its pivotal heads (its own
graph). What it gives up for that: the layout keeps every row's full width (the kernel loops each
row's own count, so this costs nothing), a SharePrefill layer always launches its block-mass pass
for its pivotal heads (in two passes: the one-pass scratch is sized on the host; without pivotal
heads its programs do no work), and a layer whose heads keep every block runs the sparse kernel,
not the model's dense SDPA (equal within bf16 rounding, no longer bit for bit). Below
``ATTENTION_IN_GRAPH_BELOW`` keys (SharePrefill and flexprefill at 4K) the attention, the map and the record are
inside the layer's graph too, fed copies of q and v: there the host's launches would cost more than
the copies (docs/benchmarks.md, "Attention out of the graph").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ... import kernels
from ...kernels.layout import LayoutDraft
from ...kernels.reference import causal_block_mask, num_blocks
from .decision_graphs import DecisionGraphs
from .method_config import (
    AShapeConfig,
    Decision,
    FallbackRule,
    MethodConfig,
    MethodName,
    SharePrefillConfig,
    VerticalSlashConfig,
)
from .patterns import a_shape_mask, mass_covered, probe_coverage, tail_first_row
from .sharing import SharingState

# Longest prompt (keys) whose whole layer (or decision step and pivotal record) is recorded as a
# CUDA graph, and up to which a layer runs as one step. Beyond it the steps' launches and the sync
# cost under 1% of the layer (H200: 0.2-0.6 ms of 53-180 ms at 128K), while a graph keeps its
# intermediates and its static copies of k, q's probe rows and block means allocated
# for as long as it is kept.
GRAPHS_UP_TO = 65536
# Keys below which a whole layer's graph also holds its attention (and SharePrefill's map and record),
# per method: that costs copies of q, k, v and the output into and out of the graph, but saves the host
# the attention's launch and, for SharePrefill, the map's and the record graph's. Measured on the H200
# in session 10 (docs/scripts/layer_profile.py, planted Llama-shape layers, the session 9 tree and this
# one in one lease; docs/benchmarks.md, "Attention out of the graph"): the GPU work of a layer falls
# with the attention out of the graph (4K, sharing SharePrefill layer: 0.447 against 0.477 ms busy;
# vertical-slash 0.38 against 0.42; at 8K vertical-slash 0.875 against 0.906 ms wall, 1.09x dense
# against 1.02x), but at 4K a SharePrefill layer is bound by the host, whose extra launches showed
# as 0.63-0.96 ms wall against 0.58-0.67 with everything in the graph (the spread is run to run on the
# same code). Session 11 timed the three placements round-robin in one process (layer_profile.py
# --in-graph --rounds=5; benchmarks.md, "Where the attention runs, round-robin"): at 4K in the graph
# wins for a sharing SharePrefill layer (fixed 0.39 against 0.68 ms) and flexprefill (0.35 against
# 0.44), ties for vertical-slash and a pivotal layer, loses for a-shape (0.32 against 0.29); at 8K
# the placements tie within 2-4%, and at 16K out of the graph wins for every method (3-9%). So
# SharePrefill and flexprefill keep their attention in the graph below 8K; the other methods do not.
ATTENTION_IN_GRAPH_BELOW = {MethodName.SHAREPREFILL: 8192, MethodName.FLEXPREFILL: 8192}
# A SharePrefill layer with no head in a shared cluster cannot have a pivotal head, so its map launch and
# record do nothing; with this on, the whole-layer paths skip them for such layers (14 of Qwen2.5-Coder-0.5B's
# 24 layers with the shipped lookup). Outputs, traces and sharing state match the synced path bit for bit (CPU
# and GPU tests). Session 12 (sharing_diagnosis.py, H200, two runs, skipping against mapping): Qwen at 32K
# gamma 0.95 attention 64.7/64.8 against 65.1/65.3 ms, at 0.9 55.6/56.0 against 56.3/56.6; same fidelity.
SKIP_MAP_UNCLUSTERED = True
# what kernels.head_decisions writes for (vertical-slash, query-aware, shared, pivotal)
DECISION_CODES = (int(Decision.VERTICAL_SLASH), int(Decision.QUERY_AWARE), int(Decision.SHARED),
                  int(Decision.PIVOTAL))


@dataclass
class LayerTrace:
    """Per-head record of one layer, tensors ``[B, H]`` (``source``: ``[B, H, 2]``), on device."""

    layer: int
    decision: torch.Tensor  # int8 Decision codes
    density: torch.Tensor  # kept / causal blocks
    coverage: torch.Tensor  # estimated covered attention mass (probe row), 1.0 for dense heads
    source: torch.Tensor  # (layer, head) a shared head took its pattern from, else -1
    recall: torch.Tensor | None = None  # true attention mass inside the kept blocks (if measured)
    mask: torch.Tensor | None = None  # [B, H, nqb, nkb] kept blocks (if kept)
    dense_reason: str | None = None  # why the layer ran the model's own dense attention (a family feature)


class DecisionPlan(NamedTuple):
    """What the decision step (probe, estimates, decisions, layout draft) hands to the kernel
    step: tensors only, so that on CUDA they can be a recorded graph's own outputs (valid until
    that graph's next replay; the trace keeps copies). ``[B, H]`` unless said otherwise."""

    mask: torch.Tensor  # [B, H, nqb, nkb] bool: the blocks each head keeps
    decision: torch.Tensor  # int8 Decision codes
    counts: torch.Tensor  # [B, H, nqb] the layout draft: kept blocks per query-block row
    ordered: torch.Tensor  # the draft's kept key-block indices, in kernel order
    num_full: torch.Tensor  # [B, H, nqb] the draft's blocks that need no causal mask
    density: torch.Tensor  # kept / causal blocks
    coverage: torch.Tensor  # estimated covered mass of the probe rows (1.0 for pivotal heads)
    source: torch.Tensor  # [B, H, 2] (layer, head) a shared head took its pattern from, else -1
    host_flags: torch.Tensor  # [5] long, fetched in one transfer: widest row, keeps every block,
    #                           number of pivotal heads, kept blocks, causal blocks (all heads)
    vertical: torch.Tensor  # [B, H, nkb] the probe's pooled vertical profile
    slash: torch.Tensor  # [B, H, nkb] the probe's pooled slash profile
    pivotal: torch.Tensor | None = None  # shareprefill: bool, heads that run dense and are mapped
    own_pattern: torch.Tensor | None = None  # shareprefill: [B, H, nqb, nkb] each head's own
    #                                          vertical-slash mask (kept for its pivotal record)


def _full(shape, value, device, dtype) -> torch.Tensor:
    return torch.full(shape, value, device=device, dtype=dtype)


class SparsePrefill:
    """A method and its config, applied layer by layer; holds SharePrefill's per-forward state.

    A layer runs in two steps. The decision step goes from q and k to the block mask and the
    layout draft: the probe and estimation kernels (Triton on CUDA), then pure tensor operations;
    on CUDA it is recorded as a CUDA graph per geometry (``graphs``; ``use_graphs``) and replayed
    on copies of q and k. Then one host sync, the block-sparse kernel, SharePrefill's record of its
    pivotal heads (a second graph per geometry on CUDA: ``record_graphs``) and the trace."""

    def __init__(self, method: MethodName, config: MethodConfig, sharing: SharingState | None = None,
                 measure_recall: bool = False, keep_masks: bool = False, use_graphs: bool = True,
                 whole_layer: bool = True):
        self.method = MethodName(method)
        self.config = config
        self.sharing = sharing
        self.measure_recall = measure_recall  # costs one exact block-mass pass per layer
        self.keep_masks = keep_masks
        self.whole_layer = whole_layer  # on CUDA with the Triton kernel: one step, no host sync
        self.graphs = DecisionGraphs(enabled=use_graphs)  # the decision step
        self.record_graphs = DecisionGraphs(enabled=use_graphs)  # SharingState.record_pivotals
        self.layer_graphs = DecisionGraphs(enabled=use_graphs)  # decision and layout (_plan_step)
        self._last_layer = 1 << 30  # the last layer SharePrefill ran the sparse path on
        if self.method is MethodName.SHAREPREFILL and sharing is None:
            raise ValueError("shareprefill needs a SharingState (a lookup; empty means no sharing)")

    def graph_counts(self) -> tuple[int, int]:
        """CUDA graphs recorded and replays of them, per layer: decision steps, with or without the
        layout (SharePrefill's pivotal records, a graph of their own, are not counted)."""
        return (self.graphs.captures + self.layer_graphs.captures, self.graphs.replays + self.layer_graphs.replays)

    # ---- entry point -------------------------------------------------------------------------
    def continue_after(self, layer: int) -> None:
        """The next ``attend`` continues the forward pass that ran ``layer`` (SharePrefill keeps its
        pivotal patterns) even when its layer number is not higher than the last one's: how a
        benchmark times one sharing layer again and again. Without it a layer number at or below
        the last one starts a new forward pass (the state is reset)."""
        self._last_layer = layer

    def attend(self, layer: int, q, k, v, scale: float) -> tuple[torch.Tensor, LayerTrace]:
        b, h, nq, _ = q.shape
        nk = k.shape[2]
        bs = self.config.block_size
        if self.method is MethodName.DENSE or nk < max(self.config.dense_below, 1) or nk <= bs:
            return self._dense(layer, q, k, v, scale)
        inputs = {}
        if self.method is MethodName.SHAREPREFILL:
            nqb, nkb = num_blocks(nq, bs), num_blocks(nk, bs)
            if layer <= self._last_layer:  # a new forward pass (its first layers may have run dense)
                self.sharing.reset(b, nqb, nkb, q.device)
            self._last_layer = layer
            self.sharing.ensure(b, nqb, nkb, q.device)
            inputs["cluster"] = self.sharing.cluster_row(layer, q.device)
        backend = self._whole_layer_backend(q, nk)
        if backend is not None and nk < ATTENTION_IN_GRAPH_BELOW.get(self.method, 0):
            return self._run_layer_graph(layer, q, k, v, scale, inputs, backend)
        inputs = dict(self._step_inputs(q, k), **inputs)
        if backend is not None:
            return self._run_whole(layer, q, k, v, scale, inputs)
        key = (scale, nq, kernels.select_backend(q), self.sharing.generation if self.sharing else 0,
               _signature(inputs))
        plan = self.graphs.run(key, lambda **t: self._step(scale=scale, nq=nq, **t), inputs,
                               record=nk <= GRAPHS_UP_TO)
        return self._run(layer, q, k, v, scale, plan)

    # ---- paths ---------------------------------------------------------------------------------
    def _dense(self, layer, q, k, v, scale):
        return _sdpa(q, k, v, scale), self.dense_trace(layer, q, k)

    def dense_trace(self, layer: int, q, k, reason: str | None = None) -> LayerTrace:
        """The trace of a layer whose heads all ran dense (``reason``: why, when not by choice)."""
        b, h = q.shape[:2]
        ones = _full((b, h), 1.0, q.device, torch.float32)
        trace = LayerTrace(layer, _full((b, h), int(Decision.DENSE), q.device, torch.int8), ones, ones,
                           _full((b, h, 2), -1, q.device, torch.long), ones if self.measure_recall else None,
                           dense_reason=reason)
        if self.keep_masks:
            nqb, nkb = num_blocks(q.shape[2], self.config.block_size), num_blocks(k.shape[2], self.config.block_size)
            trace.mask = causal_block_mask(q.shape[2], k.shape[2], self.config.block_size, q.device) \
                .expand(b, h, nqb, nkb).cpu()
        return trace

    def _step_inputs(self, q, k) -> dict:
        """What the decision step reads of q and k: the probe's queries (q's last ``min(block, Nq)``
        rows, a view), k and, for FlexPrefill and SharePrefill, the queries' block means ``[B, H, nqb,
        D]`` fp32 (one pooling launch, here). A recorded step is fed copies of these, so a layer
        no longer copies all of q (at 8K on Llama shapes q is 64 MiB: about 30 us of copy)."""
        bs, nq = self.config.block_size, q.shape[2]
        inputs = {"q_probe": q[:, :, nq - min(bs, nq):], "k": k}
        if self.method in (MethodName.FLEXPREFILL, MethodName.SHAREPREFILL):
            inputs["q_means"] = kernels.pool_blocks_mean(q, bs)
        return inputs

    def _step(self, q_probe, k, scale: float, nq: int, cluster=None, q_means=None) -> DecisionPlan:
        """The decision step of ``nq`` queries from ``_step_inputs`` (q's probe rows ``[B, H, m, D]``,
        k ``[B, H_kv, Nk, D]``, FlexPrefill's and SharePrefill's query block means) and SharePrefill's
        ``cluster`` row ``[H]``: the probe's pooled profiles and, for FlexPrefill and SharePrefill,
        the estimates (docs/method.md, steps 1-3), then ``_decide``. What ``DecisionGraphs`` records:
        no host sync. The probe rows are end-aligned to the keys, as they sit in q."""
        bs = self.config.block_size
        vertical, slash = kernels.last_block_pooled_profiles(q_probe, k, bs, scale)  # [B, H, nkb] each
        estimate = pooled = None
        if self.method in (MethodName.FLEXPREFILL, MethodName.SHAREPREFILL):
            estimate = kernels.probe_column_estimate(q_probe, k, bs, scale)  # [B, H, nkb]
            pooled = kernels.pooled_estimate_of_means(q_means, k, nq, bs, scale)  # [B, H, nqb, nkb]
        return self._decide(nq, k.shape[2], vertical, slash, estimate, pooled, cluster)

    def _decide(self, nq: int, nk: int, vertical, slash, estimate=None, pooled=None,
                cluster=None) -> DecisionPlan:
        """Block mask, decisions and layout draft of one layer from the probe's pooled
        ``vertical``/``slash`` profiles ``[B, H, nkb]`` and the estimates (docs/method.md, steps 2-5).
        Tensor operations only, no host sync: see DecisionGraphs."""
        b, h = vertical.shape[:2]
        bs = self.config.block_size
        dev = vertical.device
        share = own = None
        if self.method is MethodName.A_SHAPE:
            cfg: AShapeConfig = self.config
            mask = a_shape_mask(b, h, nq, nk, bs, cfg.sink_tokens, cfg.local_tokens, dev)
            decision = _full((b, h), int(Decision.A_SHAPE), dev, torch.int8)
            draft = kernels.BlockLayout.draft(mask, bs, nq, nk)
        else:
            cfg: VerticalSlashConfig = self.config
            heads = self._heads(vertical, slash, estimate, cluster)
            decision, minimal, query_aware, share_args = heads.decision, None, None, None
            if self.method is not MethodName.VERTICAL_SLASH:
                least = _full((b, h), min(num_blocks(cfg.min_budget, bs), vertical.shape[-1]), dev, torch.long)
                minimal = (least, least)  # the minimal vertical-slash budgets
                # each row's coverage of the pooled estimate, sorted for the query-aware heads only
                query_aware = (heads.qa, *kernels.coverage_rows(pooled, cfg.gamma, heads.qa))
            if self.method is MethodName.SHAREPREFILL:
                share = heads
                last_row = (heads.lr_rank, heads.lr_count) if heads.lr_rank is not None else None
                share_args = (heads.shared, heads.pivotal, self.sharing.patterns_of(heads.cid), last_row)
            # the masks (own vertical-slash, query-aware, borrowed, pivotal, exact tail) and the
            # layout draft: one launch on the Triton backend (kernels/decide.py)
            mask, own, draft = kernels.assemble_layout(
                heads.v_rank, heads.s_rank, heads.v_count, heads.s_count, nq, nk, bs,
                minimal=minimal, query_aware=query_aware, share=share_args,
                tail_first=tail_first_row(cfg.exact_tail, nq, bs), want_own=share is not None)
        n_pivotal = share.pivotal.sum() if share is not None else torch.zeros((), dtype=torch.long, device=dev)
        kept, causal = draft.counts.sum().long(), draft.causal_blocks().long() * b * h
        flags = torch.stack([draft.counts.max().long(), (kept == causal).long(), n_pivotal.long(), kept, causal])
        coverage = torch.where(decision == int(Decision.PIVOTAL), 1.0, probe_coverage(mask, vertical))
        source = _full((b, h, 2), -1, dev, torch.long) if share is None else share.source  # -1: not shared
        return DecisionPlan(
            mask=mask, decision=decision, counts=draft.counts, ordered=draft.ordered,
            num_full=draft.num_full, density=draft.density(), coverage=coverage, source=source,
            host_flags=flags, vertical=vertical, slash=slash, pivotal=None if share is None else share.pivotal,
            own_pattern=None if share is None else own)

    def _heads(self, vertical, slash, estimate, cluster):
        """Every head's ranks, budgets and decision (``kernels.head_decisions``: one launch on the
        Triton backend): vertical-slash budgets at gamma; FlexPrefill's query-aware test; for
        SharePrefill the sharing test against the pivotal patterns of earlier layers (shared heads
        borrow their cluster's pattern plus the minimal vertical-slash mask and, with
        ``own_last_row``, their own coverage of the probe row; new pivotal heads run dense)."""
        cfg: VerticalSlashConfig = self.config
        bs = cfg.block_size
        kw = {}
        if self.method is not MethodName.VERTICAL_SLASH:
            kw.update(estimate=estimate, tau_qa=cfg.tau_qa)
        if self.method is MethodName.SHAREPREFILL:
            kw.update(share=self.sharing.share_state(cluster, cfg.tau_s), last_row=cfg.own_last_row)
        return kernels.head_decisions(
            vertical, slash, gamma=cfg.gamma, min_count=num_blocks(cfg.min_budget, bs), codes=DECISION_CODES,
            v_fixed=None if cfg.vertical_tokens is None else num_blocks(cfg.vertical_tokens, bs),
            s_fixed=None if cfg.slash_tokens is None else num_blocks(cfg.slash_tokens, bs), **kw)

    # ---- the whole layer as one step ------------------------------------------------------------
    def _whole_layer_backend(self, q, nk: int):
        """The attention backend if this layer runs as one step without a host sync, else None:
        on CUDA, up to GRAPHS_UP_TO keys (where it is recorded; beyond, the sync costs nothing next to
        the layer, and the synced path keeps the pivotal map's one-pass option on head dim 128:
        measured 176 vs 253 ms for a pivotal Llama-shape layer at 128K), where the attention runs on
        the Triton kernel (``auto``'s choice of flash reads the layer's kept share on the host)."""
        if not (self.whole_layer and q.is_cuda and nk <= GRAPHS_UP_TO):
            return None
        backend = kernels.attention_backend(q, kernels.Geometry(q.shape[2], nk, self.config.block_size))
        return backend if backend is kernels.Backend.TRITON else None

    def _run_whole(self, layer, q, k, v, scale, inputs: dict):
        """The whole layer without a host sync: ``_plan_step`` recorded once per geometry as one
        graph and replayed (eager where ``use_graphs`` is off), then the attention launched on the
        layer's own q, k, v (no copy of them into the graph, no copy of its output out of it) and, for
        SharePrefill, the two-pass block-mass map of its pivotal heads and their record (both do
        nothing for a layer without pivotal heads; the record is a graph of its own). With
        ``SKIP_MAP_UNCLUSTERED`` a layer with no head in a shared cluster (known on the host from the
        lookup) skips both."""
        nq, nk = q.shape[2], k.shape[2]
        key = (scale, nq, self.sharing.generation if self.sharing else 0, _signature(inputs))
        plan, layout = self.layer_graphs.run(key, lambda **t: self._plan_step(scale=scale, nq=nq, **t), inputs)
        if not self._mapped(layer):
            out = kernels.sparse_attention(q, k, v, layout, scale=scale)
        else:
            out, mass = kernels.sparse_attention(q, k, v, layout, scale=scale, return_block_mass=True,
                                                 mass_heads=plan.pivotal, mass_pass="two")
            self._record_pivotals(layer, nk, plan, mass)
        return out, self._trace(layer, plan, self._recall(q, k, scale, plan))

    def _mapped(self, layer: int) -> bool:
        """Whether a whole-layer step of ``layer`` runs SharePrefill's map and record: every
        SharePrefill layer, or with ``SKIP_MAP_UNCLUSTERED`` only those with a head in a shared cluster."""
        return self.method is MethodName.SHAREPREFILL and (not SKIP_MAP_UNCLUSTERED or self.sharing.clustered(layer))

    def _run_layer_graph(self, layer, q, k, v, scale, inputs: dict, backend):
        """``_run_whole`` below ``ATTENTION_IN_GRAPH_BELOW`` keys: the step's inputs made, the
        attention, SharePrefill's map and its record inside the layer's graph too (``_layer_step``),
        fed copies of q, k and v (and the cluster row); the output is the graph's, so it is cloned.
        The attention call is counted here, once per layer (a replay does not pass through the
        dispatcher)."""
        inputs = dict(inputs, q=q, k=k, v=v)
        mapped = self._mapped(layer)
        if self.method is MethodName.SHAREPREFILL:
            inputs["layer"] = self.sharing.layer_index(layer, q.device)
        key = ("layer", scale, q.shape[2], self.sharing.generation if self.sharing else 0, mapped,
               _signature(inputs))
        with kernels.uncounted():
            out, plan = self.layer_graphs.run(
                key, lambda **t: self._layer_step(scale=scale, nq=q.shape[2], mapped=mapped, **t), inputs)
        kernels.count_call(backend)
        return out.clone(), self._trace(layer, plan, self._recall(q, k, scale, plan))

    def _layer_step(self, q, k, v, scale: float, nq: int, cluster=None, layer=None, mapped: bool = False):
        """``_step_inputs``, ``_plan_step``, the attention and, where ``mapped`` (``_mapped``: a
        SharePrefill layer), the two-pass block-mass map of its pivotal heads and their record:
        ``(out, plan)``, no host sync."""
        plan, layout = self._plan_step(scale=scale, nq=nq, cluster=cluster, **self._step_inputs(q, k))
        if not mapped:
            return kernels.sparse_attention(q, k, v, layout, scale=scale), plan
        out, mass = kernels.sparse_attention(q, k, v, layout, scale=scale, return_block_mass=True,
                                             mass_heads=plan.pivotal, mass_pass="two")
        self._record(cluster, layer, plan, mass)
        return out, plan

    def _plan_step(self, q_probe, k, scale: float, nq: int, cluster=None, q_means=None):
        """The decision step and the layout at every row's full width (no widest row to read; the
        kernel loops each row's own count): ``(plan, layout)``, the layout's tensors the graph's."""
        plan = self._step(q_probe, k, scale, nq, cluster, q_means)
        draft = LayoutDraft(plan.counts, plan.ordered, plan.num_full, self.config.block_size, nq, k.shape[2])
        return plan, draft.finish(plan.ordered.shape[-1])

    # ---- kernel and trace --------------------------------------------------------------------
    def _run(self, layer, q, k, v, scale, plan: DecisionPlan):
        bs = self.config.block_size
        max_kept, keeps_all, n_pivotal, kept, causal = plan.host_flags.tolist()  # the layer's one host sync
        draft = LayoutDraft(plan.counts, plan.ordered, plan.num_full, bs, q.shape[2], k.shape[2])
        layout, want_mass = draft.finish(max_kept), n_pivotal > 0
        pivotal = plan.pivotal
        if keeps_all:  # nothing skipped: dense SDPA, bit-equal to dense
            out = _sdpa(q, k, v, scale)
            mass = kernels.block_mass(q, k, bs, scale) if want_mass else None
        else:
            result = kernels.sparse_attention(q, k, v, layout, scale=scale, return_block_mass=want_mass,
                                              mass_heads=pivotal if want_mass else None,
                                              num_mass_heads=n_pivotal if want_mass else None,
                                              kept_share=kept / max(causal, 1))
            out, mass = result if want_mass else (result, None)
        if want_mass:
            self._record_pivotals(layer, k.shape[2], plan, mass)
        return out, self._trace(layer, plan, self._recall(q, k, scale, plan))

    def _recall(self, q, k, scale, plan: DecisionPlan) -> torch.Tensor | None:
        """With ``measure_recall``: the true attention mass inside each head's kept blocks."""
        if not self.measure_recall:
            return None
        return mass_covered(plan.mask, kernels.block_mass(q, k, self.config.block_size, scale))

    def _trace(self, layer: int, plan: DecisionPlan, recall) -> LayerTrace:
        kept = plan.mask.cpu() if self.keep_masks else None
        # the plan's tensors belong to the recorded graph: the trace keeps copies
        return LayerTrace(layer, plan.decision.clone(), plan.density.clone(), plan.coverage.clone(),
                          plan.source.clone(), recall, kept)

    def _record(self, cluster, layer, plan: DecisionPlan, mass: torch.Tensor) -> None:
        """``SharingState.record_pivotals`` of the plan's pivotal heads from their block-mass maps
        ``mass`` ``[B, H, nqb, nkb]`` (``cluster``: the layer's row of the table; ``layer``: its
        number as a 0-d tensor)."""
        cfg: SharePrefillConfig = self.config
        self.sharing.record_pivotals(cluster, layer, plan.pivotal, mass, plan.own_pattern, plan.vertical,
                                     plan.slash, cfg.gamma, cfg.tau_fb,
                                     cfg.fallback is FallbackRule.COVERS_AND_SPARSER)

    def _record_pivotals(self, layer: int, nk: int, plan: DecisionPlan, mass: torch.Tensor) -> None:
        """``_record`` on CUDA as a graph per geometry that serves every layer (the layer's cluster
        row and number are inputs, the state keeps its storage)."""
        cfg: SharePrefillConfig = self.config
        dev = mass.device
        inputs = {"cluster": self.sharing.cluster_row(layer, dev), "layer": self.sharing.layer_index(layer, dev),
                  "pivotal": plan.pivotal, "block_mass": mass, "own_vs_mask": plan.own_pattern,
                  "v_blocks": plan.vertical, "s_blocks": plan.slash}

        def record(cluster, layer, pivotal, block_mass, own_vs_mask, v_blocks, s_blocks):
            self._record(cluster, layer, plan._replace(pivotal=pivotal, own_pattern=own_vs_mask, vertical=v_blocks,
                                                       slash=s_blocks), block_mass)

        key = (self.sharing.generation, cfg.gamma, cfg.tau_fb, cfg.fallback, _signature(inputs))
        self.record_graphs.run(key, record, inputs, record=nk <= GRAPHS_UP_TO)


def _signature(inputs: dict[str, torch.Tensor]) -> tuple:
    """What a recorded graph fixes about its inputs: names, shapes, dtypes, devices."""
    return tuple((name, t.shape, t.dtype, t.device) for name, t in inputs.items())


def _sdpa(q, k, v, scale):
    """Dense causal attention (torch SDPA), queries end-aligned to the keys."""
    return torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=q.shape[2] > 1 and q.shape[2] == k.shape[2], scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
        attn_mask=None if q.shape[2] in (1, k.shape[2]) else _end_aligned_mask(q, k))


def _end_aligned_mask(q, k) -> torch.Tensor:
    from ...kernels.reference import causal_token_mask

    return causal_token_mask(q.shape[2], k.shape[2], q.device)
