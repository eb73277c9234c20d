"""One layer of sparse prefill: probe, per-head decisions, block layout, kernel (docs/method.md, steps 1-6).

``SparsePrefill.attend`` takes q ``[B, H, Nq, D]`` and k/v ``[B, H_kv, Nk, D]`` (GQA is read
through the group index by the kernels) and returns the output ``[B, H, Nq, D]`` plus a
``LayerTrace``. Decisions are batched tensor operations (a CUDA graph per geometry on CUDA); the
host syncs once per layer, to size the layout.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ... import kernels
from ...kernels.layout import LayoutDraft
from ...kernels.reference import causal_block_mask, num_blocks
from .coverage import coverage_mask
from .decision_graphs import DecisionGraphs
from .method_config import (AShapeConfig, Decision, FlexPrefillConfig, MethodConfig, MethodName,
                            SharePrefillConfig, VerticalSlashConfig)
from .patterns import (a_shape_mask, gamma_budget, js_distance, mass_covered, pooled_profiles,
                       probe_coverage, vertical_slash_mask, with_exact_tail)
from .sharing import SharingState


# Longest prompt (keys) whose decision step is recorded as a CUDA graph. Beyond it the step's
# launches cost under 1% of the layer (H200: 0.2-0.6 ms of 53-180 ms at 128K), while the graph
# would keep its intermediates (the pooled estimate and its sort) allocated for the whole pass.
GRAPHS_UP_TO = 65536


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


@dataclass
class _Probe:
    v: torch.Tensor  # [B, H, nkb] pooled vertical profile
    s: torch.Tensor  # [B, H, nkb] pooled slash profile


def _full(shape, value, device, dtype) -> torch.Tensor:
    return torch.full(shape, value, device=device, dtype=dtype)


class SparsePrefill:
    """A method and its config, applied layer by layer; holds SharePrefill's per-forward state.

    A layer runs in three steps: the probe and estimation kernels (Triton on CUDA), the decision
    step (pure tensor operations from their results to the block mask and the layout draft,
    recorded as a CUDA graph per geometry on CUDA: ``use_graphs``), then one host sync, the
    block-sparse kernel and the trace."""

    def __init__(self, method: MethodName, config: MethodConfig, sharing: SharingState | None = None,
                 measure_recall: bool = False, keep_masks: bool = False, use_graphs: bool = True):
        self.method = MethodName(method)
        self.config = config
        self.sharing = sharing
        self.measure_recall = measure_recall  # costs one exact block-mass pass per layer
        self.keep_masks = keep_masks
        self.graphs = DecisionGraphs(enabled=use_graphs)
        if self.method is MethodName.SHAREPREFILL and sharing is None:
            raise ValueError("shareprefill needs a SharingState (a lookup; empty means no sharing)")

    # ---- entry point -------------------------------------------------------------------------
    def attend(self, layer: int, q, k, v, scale: float) -> tuple[torch.Tensor, LayerTrace]:
        b, h, nq, _ = q.shape
        nk = k.shape[2]
        bs = self.config.block_size
        if self.method is MethodName.DENSE or nk < max(self.config.dense_below, 1) or nk <= bs:
            return self._dense(layer, q, k, v, scale)
        probe = _Probe(*pooled_profiles(*kernels.last_block_profiles(q, k, bs, scale), bs))
        inputs = {"v": probe.v, "s": probe.s}
        if self.method in (MethodName.FLEXPREFILL, MethodName.SHAREPREFILL):
            inputs["estimate"] = kernels.probe_column_estimate(q, k, bs, scale)  # [B, H, nkb]
            inputs["pooled"] = kernels.pooled_block_estimate(q, k, bs, scale)  # [B, H, nqb, nkb]
        if self.method is MethodName.SHAREPREFILL:
            nqb, nkb = num_blocks(nq, bs), num_blocks(nk, bs)
            if layer == 0:
                self.sharing.reset(b, nqb, nkb, q.device)
            self.sharing.ensure(b, nqb, nkb, q.device)
            inputs["cluster"] = self.sharing.cluster_row(layer, q.device)
        key = (nq, nk, self.sharing.generation if self.sharing else 0,
               tuple((name, t.shape, t.dtype, t.device) for name, t in inputs.items()))
        plan = self.graphs.run(key, lambda **t: self._decide(nq, nk, **t), inputs,
                               record=nk <= GRAPHS_UP_TO)
        return self._run(layer, q, k, v, scale, plan, probe)

    # ---- paths ---------------------------------------------------------------------------------
    def _dense(self, layer, q, k, v, scale):
        out = _sdpa(q, k, v, scale)
        b, h = q.shape[:2]
        ones = _full((b, h), 1.0, q.device, torch.float32)
        trace = LayerTrace(layer, _full((b, h), int(Decision.DENSE), q.device, torch.int8), ones, ones,
                           _full((b, h, 2), -1, q.device, torch.long), ones if self.measure_recall else None)
        if self.keep_masks:
            nqb, nkb = num_blocks(q.shape[2], self.config.block_size), num_blocks(k.shape[2], self.config.block_size)
            trace.mask = causal_block_mask(q.shape[2], k.shape[2], self.config.block_size, q.device) \
                .expand(b, h, nqb, nkb).cpu()
        return out, trace

    def _decide(self, nq: int, nk: int, v, s, estimate=None, pooled=None, cluster=None) -> dict:
        """Block mask, decisions and layout draft of one layer from the probe and estimates
        (docs/method.md, steps 2-5). Tensor operations only, no host sync: see DecisionGraphs."""
        b, h = v.shape[:2]
        bs = self.config.block_size
        plan = {}
        if self.method is MethodName.A_SHAPE:
            cfg: AShapeConfig = self.config
            mask = a_shape_mask(b, h, nq, nk, bs, cfg.sink_tokens, cfg.local_tokens, v.device)
            decision = _full((b, h), int(Decision.A_SHAPE), v.device, torch.int8)
        else:
            cfg: VerticalSlashConfig = self.config
            own = self._vertical_slash(v, s, nq, nk, cfg.gamma, fixed=True)
            mask, decision = own, _full((b, h), int(Decision.VERTICAL_SLASH), v.device, torch.int8)
            if self.method is not MethodName.VERTICAL_SLASH:
                fcfg: FlexPrefillConfig = cfg
                minimal = self._vertical_slash(v, s, nq, nk, 0.0, fixed=False)
                qa = js_distance(estimate, v) < fcfg.tau_qa  # [B, H]
                qa_mask = coverage_mask(pooled, cfg.gamma) | minimal
                mask = torch.where(qa[..., None, None], qa_mask, own)
                decision = torch.where(qa, int(Decision.QUERY_AWARE), decision).to(torch.int8)
                if self.method is MethodName.SHAREPREFILL:
                    mask, decision = self._share(plan, nq, nk, mask, decision, v, s, own, minimal, qa, cluster)
            mask = with_exact_tail(mask, cfg.exact_tail, nq, nk, bs)
        draft = kernels.BlockLayout.draft(mask, bs, nq, nk)
        wanted = plan["pivotal"].any() if "pivotal" in plan else torch.zeros((), dtype=torch.bool, device=v.device)
        # what the host needs, fetched in one transfer: the layout's width, "keeps every block",
        # "has pivotal heads"
        plan["flags"] = torch.stack([draft.counts.max().long(), draft.keeps_all().long(), wanted.long()])
        coverage = torch.where(decision == int(Decision.PIVOTAL), 1.0, probe_coverage(mask, v))
        plan.setdefault("source", _full((b, h, 2), -1, v.device, torch.long))  # no head shared
        plan.update(mask=mask, decision=decision, counts=draft.counts, ordered=draft.ordered,
                    num_full=draft.num_full, density=draft.density(), coverage=coverage)
        return plan

    def _share(self, plan, nq, nk, mask, decision, v, s, own, minimal, qa, cluster):
        cfg: SharePrefillConfig = self.config
        share = self.sharing.decide(cluster, ~qa, v, s, cfg.tau_s)
        full = causal_block_mask(nq, nk, cfg.block_size, v.device)
        borrowed = share.pattern | minimal  # a new tensor: the pivotal's pattern stays untouched
        if cfg.own_last_row:
            borrowed[:, :, -1, :] |= coverage_mask(v, cfg.gamma)
        mask = torch.where(share.shared[..., None, None], borrowed, mask)
        mask = torch.where(share.pivotal[..., None, None], full, mask)
        decision = torch.where(share.shared, int(Decision.SHARED), decision)
        decision = torch.where(share.pivotal, int(Decision.PIVOTAL), decision).to(torch.int8)
        plan.update(pivotal=share.pivotal, own=own, source=share.source)
        return mask, decision

    def _vertical_slash(self, v, s, nq: int, nk: int, gamma: float, fixed: bool):
        cfg: VerticalSlashConfig = self.config
        bs = cfg.block_size
        min_blocks = num_blocks(cfg.min_budget, bs)
        v_count = gamma_budget(v, gamma, min_blocks) if gamma > 0 else \
            _full(v.shape[:2], min(min_blocks, v.shape[-1]), v.device, torch.long)
        s_count = gamma_budget(s, gamma, min_blocks) if gamma > 0 else v_count.clone()
        if fixed and cfg.vertical_tokens is not None:
            v_count = torch.full_like(v_count, num_blocks(cfg.vertical_tokens, bs))
        if fixed and cfg.slash_tokens is not None:
            s_count = torch.full_like(s_count, num_blocks(cfg.slash_tokens, bs))
        return vertical_slash_mask(v, s, v_count, s_count, nq, nk, bs)

    # ---- kernel and trace --------------------------------------------------------------------
    def _run(self, layer, q, k, v, scale, plan: dict, probe: _Probe):
        bs = self.config.block_size
        max_kept, keeps_all, want_mass = plan["flags"].tolist()  # the layer's one host sync
        draft = LayoutDraft(plan["counts"], plan["ordered"], plan["num_full"], bs, q.shape[2], k.shape[2])
        layout, want_mass = draft.finish(max_kept), bool(want_mass)
        pivotal = plan.get("pivotal")
        if keeps_all:  # nothing skipped: dense SDPA, bit-equal to dense
            out = _sdpa(q, k, v, scale)
            mass = kernels.block_mass(q, k, bs, scale) if want_mass else None
        else:
            result = kernels.sparse_attention(q, k, v, layout, scale=scale, return_block_mass=want_mass,
                                              mass_heads=pivotal if want_mass else None)
            out, mass = result if want_mass else (result, None)
        mask, decision = plan["mask"], plan["decision"]
        if want_mass:
            cfg: SharePrefillConfig = self.config
            self.sharing.record_pivotals(layer, pivotal, mass, plan["own"], probe.v, probe.s,
                                         cfg.gamma, cfg.tau_fb)
        recall = None
        if self.measure_recall:
            recall = mass_covered(mask, kernels.block_mass(q, k, bs, scale))
        kept = mask.cpu() if self.keep_masks else None
        # the plan's tensors belong to the recorded graph: the trace keeps copies
        return out, LayerTrace(layer, decision.clone(), plan["density"].clone(), plan["coverage"].clone(),
                               plan["source"].clone(), recall, kept)


def _sdpa(q, k, v, scale):
    """Dense causal attention (torch SDPA), queries end-aligned to the keys."""
    return torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=q.shape[2] > 1 and q.shape[2] == k.shape[2], scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
        attn_mask=None if q.shape[2] in (1, k.shape[2]) else _end_aligned_mask(q, k))


def _end_aligned_mask(q, k) -> torch.Tensor:
    from ...kernels.reference import causal_token_mask

    return causal_token_mask(q.shape[2], k.shape[2], q.device)
