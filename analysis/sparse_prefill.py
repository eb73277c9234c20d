"""One layer of sparse prefill: probe, per-head decisions, block layout, kernel (method.md 1-6).

``SparsePrefill.attend`` takes q ``[B, H, Nq, D]`` and k/v ``[B, H_kv, Nk, D]`` (GQA is read
through the group index by the kernels) and returns the output ``[B, H, Nq, D]`` plus a
``LayerTrace``. Decisions are batched tensor operations; the host sees one layout build per layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import kernels
from ..kernels.reference import causal_block_mask, num_blocks
from .coverage import coverage_mask
from .method_config import (AShapeConfig, Decision, FlexPrefillConfig, MethodConfig, MethodName,
                            SharePrefillConfig, VerticalSlashConfig)
from .patterns import (a_shape_mask, gamma_budget, js_distance, mass_covered, pooled_profiles,
                       probe_coverage, vertical_slash_mask, with_exact_tail)
from .sharing import SharingState


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
    """A method and its config, applied layer by layer; holds SharePrefill's per-forward state."""

    def __init__(self, method: MethodName, config: MethodConfig, sharing: SharingState | None = None,
                 measure_recall: bool = False, keep_masks: bool = False):
        self.method = MethodName(method)
        self.config = config
        self.sharing = sharing
        self.measure_recall = measure_recall  # costs one exact block-mass pass per layer
        self.keep_masks = keep_masks
        if self.method is MethodName.SHAREPREFILL and sharing is None:
            raise ValueError("shareprefill needs a SharingState (a lookup; empty means no sharing)")

    # ---- entry point -------------------------------------------------------------------------
    def attend(self, layer: int, q, k, v, scale: float) -> tuple[torch.Tensor, LayerTrace]:
        b, h, nq, _ = q.shape
        nk = k.shape[2]
        if self.method is MethodName.DENSE or nk < max(self.config.dense_below, 1) \
                or nk <= self.config.block_size:
            return self._dense(layer, q, k, v, scale)
        probe = _Probe(*pooled_profiles(*kernels.last_block_profiles(q, k, self.config.block_size, scale),
                                         self.config.block_size))
        if self.method is MethodName.A_SHAPE:
            cfg: AShapeConfig = self.config
            mask = a_shape_mask(b, h, nq, nk, cfg.block_size, cfg.sink_tokens, cfg.local_tokens, q.device)
            decision = _full((b, h), int(Decision.A_SHAPE), q.device, torch.int8)
            return self._run(layer, q, k, v, scale, mask, decision, probe, None)
        return self._probe_based(layer, q, k, v, scale, probe)

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

    def _probe_based(self, layer, q, k, v, scale, probe: _Probe):
        cfg: VerticalSlashConfig = self.config
        bs, nq, nk = cfg.block_size, q.shape[2], k.shape[2]
        own = self._vertical_slash(probe, nq, nk, cfg.gamma, fixed=True)
        b, h = q.shape[:2]
        decision = _full((b, h), int(Decision.VERTICAL_SLASH), q.device, torch.int8)
        if self.method is MethodName.VERTICAL_SLASH:
            return self._run(layer, q, k, v, scale, own, decision, probe, None)
        fcfg: FlexPrefillConfig = cfg
        minimal = self._vertical_slash(probe, nq, nk, 0.0, fixed=False)
        estimate = kernels.probe_column_estimate(q, k, bs, scale)  # [B, H, nkb]
        qa = js_distance(estimate, probe.v) < fcfg.tau_qa  # [B, H]
        pooled = kernels.pooled_block_estimate(q, k, bs, scale)  # [B, H, nqb, nkb]
        qa_mask = coverage_mask(pooled, cfg.gamma) | minimal
        mask = torch.where(qa[..., None, None], qa_mask, own)
        decision = torch.where(qa, int(Decision.QUERY_AWARE), decision).to(torch.int8)
        if self.method is MethodName.FLEXPREFILL:
            return self._run(layer, q, k, v, scale, mask, decision, probe, None)
        return self._share(layer, q, k, v, scale, mask, decision, probe, own, minimal, qa)

    def _share(self, layer, q, k, v, scale, mask, decision, probe, own, minimal, qa):
        cfg: SharePrefillConfig = self.config
        nqb, nkb = num_blocks(q.shape[2], cfg.block_size), num_blocks(k.shape[2], cfg.block_size)
        self.sharing.ensure(q.shape[0], nqb, nkb, q.device)
        if layer == 0:
            self.sharing.reset(q.shape[0], nqb, nkb, q.device)
        share = self.sharing.decide(layer, ~qa, probe.v, probe.s, cfg.tau_s)
        full = causal_block_mask(q.shape[2], k.shape[2], cfg.block_size, q.device)
        borrowed = share.pattern | minimal  # a new tensor: the pivotal's pattern stays untouched
        if cfg.own_last_row:
            borrowed[:, :, -1, :] |= coverage_mask(probe.v, cfg.gamma)
        mask = torch.where(share.shared[..., None, None], borrowed, mask)
        mask = torch.where(share.pivotal[..., None, None], full, mask)
        decision = torch.where(share.shared, int(Decision.SHARED), decision)
        decision = torch.where(share.pivotal, int(Decision.PIVOTAL), decision).to(torch.int8)
        pivots = (share.pivotal, own)
        return self._run(layer, q, k, v, scale, mask, decision, probe, pivots, share.source)

    def _vertical_slash(self, probe: _Probe, nq: int, nk: int, gamma: float, fixed: bool):
        cfg: VerticalSlashConfig = self.config
        bs = cfg.block_size
        min_blocks = num_blocks(cfg.min_budget, bs)
        v_count = gamma_budget(probe.v, gamma, min_blocks) if gamma > 0 else \
            _full(probe.v.shape[:2], min(min_blocks, probe.v.shape[-1]), probe.v.device, torch.long)
        s_count = gamma_budget(probe.s, gamma, min_blocks) if gamma > 0 else v_count.clone()
        if fixed and cfg.vertical_tokens is not None:
            v_count = torch.full_like(v_count, num_blocks(cfg.vertical_tokens, bs))
        if fixed and cfg.slash_tokens is not None:
            s_count = torch.full_like(s_count, num_blocks(cfg.slash_tokens, bs))
        return vertical_slash_mask(probe.v, probe.s, v_count, s_count, nq, nk, bs)

    # ---- kernel and trace --------------------------------------------------------------------
    def _run(self, layer, q, k, v, scale, mask, decision, probe, pivots, source=None):
        bs = self.config.block_size
        if isinstance(self.config, VerticalSlashConfig):
            mask = with_exact_tail(mask, self.config.exact_tail, q.shape[2], k.shape[2], bs)
        draft = kernels.BlockLayout.draft(mask, bs, q.shape[2], k.shape[2])
        every = draft.counts.sum() == draft.causal_blocks() * draft.counts.shape[0] * draft.counts.shape[1]
        wanted = pivots[0].any() if pivots is not None else torch.zeros((), dtype=torch.bool, device=q.device)
        # the layer's one host sync: the layout's width, "keeps every block", "has pivotal heads"
        max_kept, keeps_all, want_mass = torch.stack([draft.counts.max().long(), every.long(),
                                                      wanted.long()]).tolist()
        layout, want_mass = draft.finish(max_kept), bool(want_mass)
        if keeps_all:  # nothing skipped: dense SDPA, bit-equal to dense
            out = _sdpa(q, k, v, scale)
            mass = kernels.block_mass(q, k, bs, scale) if want_mass else None
        else:
            result = kernels.sparse_attention(q, k, v, layout, scale=scale, return_block_mass=want_mass,
                                              mass_heads=pivots[0] if want_mass else None)
            out, mass = result if want_mass else (result, None)
        if want_mass:
            cfg: SharePrefillConfig = self.config
            self.sharing.record_pivotals(layer, pivots[0], mass, pivots[1], probe.v, probe.s,
                                         cfg.gamma, cfg.tau_fb)
        density = layout.density(per_head=True)
        coverage = probe_coverage(mask, probe.v)
        coverage = torch.where(decision == int(Decision.PIVOTAL), 1.0, coverage)
        if source is None:
            source = _full((*decision.shape, 2), -1, q.device, torch.long)
        recall = None
        if self.measure_recall:
            recall = mass_covered(mask, kernels.block_mass(q, k, bs, scale))
        kept = mask.cpu() if self.keep_masks else None
        return out, LayerTrace(layer, decision, density, coverage, source, recall, kept)


def _sdpa(q, k, v, scale):
    """Dense causal attention (torch SDPA), queries end-aligned to the keys."""
    return torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=q.shape[2] > 1 and q.shape[2] == k.shape[2], scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
        attn_mask=None if q.shape[2] in (1, k.shape[2]) else _end_aligned_mask(q, k))


def _end_aligned_mask(q, k) -> torch.Tensor:
    from ..kernels.reference import causal_token_mask

    return causal_token_mask(q.shape[2], k.shape[2], q.device)
