"""One place that chooses the kernels: Triton, flash-attn-4 (``flash``) or the plain-torch twin.

Rule. An explicit choice wins (``set_backend`` / ``use_backend``, or the environment variable
``SHAREDATTN_KERNEL_BACKEND=triton|reference|flash|auto`` read at call time); without one, CUDA
tensors get ``auto`` and CPU tensors the reference twin. Interpreted Triton on CPU
(``TRITON_INTERPRET=1``) is for kernel tests, which ask for it explicitly (``use_backend``); the
analysis code on CPU always gets the fast torch twin, even inside a test session that interprets.

* The estimation kernels, the block-mass map and the probe profiles have two implementations:
  ``select_backend`` gives Triton on CUDA and the twin on CPU unless ``triton`` or ``reference``
  is asked for (``flash`` and ``auto`` mean "the device's default" for them).
* Block-sparse attention (``sparse_attention``) also has ``flash``: flash-attn-4's block-sparse
  forward, called directly or through FlexAttention (``flash.py``). ``attention_backend`` decides
  per call: ``auto`` takes flash where ``auto_backend``'s measured rule says it is faster, and
  Triton otherwise, also wherever flash cannot run (not installed, not a Hopper GPU, a head dim or
  block size it does not take); ``flash`` asked for where it cannot run is a ``ConfigError``.
* A call that wants the block-mass map (SharePrefill's pivotal heads, ``return_block_mass``) has two
  ways to make it. Triton: its forward pass records the map (``block_sparse_attention``: one pass,
  or a second over the kept blocks). flash: flash-attn-4 has no such pass, but it returns each
  row's log-sum-exp, from which ``mass_pass.stats_from_lse`` makes the statistics the Triton mass
  pass normalises with; that pass then re-reads the kept K blocks of the ``mass_heads`` only
  (``flash.flash_sparse_attention_with_mass``: two passes, no host sync). ``auto`` takes flash for a
  map-asking call where it would without the map and at most ``FLASH_MASS_MAX_SHARE`` of the heads
  are mapped (the caller's ``num_mass_heads``; unknown counts as all); ``flash`` asked for always
  runs that path. Both maps are the same maths (checked against each other in
  tests/test_gpu/test_flash_gpu.py); ``docs/scripts/flash_bench.py --mode mass`` times them.
* ``record_backends()`` counts, inside a ``with`` block, the attention calls each backend ran
  (``prefill`` reports them per layer); a call replayed from a CUDA graph is counted by its
  caller (``uncounted``, ``count_call``).

Triton and flash modules are imported lazily, so importing this module never imports triton.
Every dispatching function returns the same shapes and dtypes on every backend: attention output
in q's dtype, maps and profiles in fp32.
"""
from __future__ import annotations

import os
from collections import Counter
from contextlib import contextmanager
from enum import Enum
from typing import Iterator, NamedTuple

import torch

from . import reference as ref
from .layout import BlockLayout
from .limits import DEFAULT_BLOCK_SIZE, DEFAULT_CHUNK_SIZE, ConfigError

ENV_VAR = "SHAREDATTN_KERNEL_BACKEND"


class Backend(str, Enum):
    TRITON = "triton"
    REFERENCE = "reference"
    FLASH = "flash"  # flash-attn-4, called directly by default; attention only (flash.py)
    AUTO = "auto"  # a choice, not a kernel: each attention call by auto_backend's rule


# ---- auto's rule, in one place: re-measure with docs/scripts/flash_bench.py ------------------------
# On the H200 (random per-head block masks, bf16, block 128; docs/benchmarks.md, "Kernel backends"),
# flash-attn-4 called directly (session 10 grid, --rounds 3): head dim 128 (Llama-3.1-8B, 32/8 heads):
# flash beat our kernel at every kept share from 64K keys (64K, 0.05: 3.35 vs 4.42 ms; 128K, 0.1: 24.8
# vs 31.8), from a share of 0.1 at 32K (1.88 vs 2.28; 0.05: 1.50 vs 1.35), from 0.3 at 16K (1.39 vs 1.59;
# 0.1: 0.75 vs 0.70) and only at 1.0 at 8K (1.18 vs 1.35; 0.5: 0.79 vs 0.73). Head dim 64
# (Qwen2.5-Coder-0.5B, 14/2 heads): ours won or tied below 128K at every share (32K, 0.1: 0.64 vs 0.93
# ms); at 128K flash from 0.1 (0.3: 22.9 vs 23.2; 0.05: 4.52 vs 4.21).
# A caller that does not know the layer's kept share on the host (the whole-layer step, which has no
# host read) gets flash from these keys on; one that knows it, AUTO_FLASH_KEPT_SHARE_STEPS.
AUTO_FLASH_MIN_KEYS = {128: 24576, 64: 131072}  # head dim -> fewest keys from which flash runs
AUTO_FLASH_HEAD_DIMS = tuple(AUTO_FLASH_MIN_KEYS)
AUTO_FLASH_BLOCK_SIZES = (128,)
# With the block-mass map, where the rule above picks flash: flash-attn-4's forward (with its log-sum-exp)
# then our mass pass for the mapped heads, when at most this share of the call's heads is mapped (head
# dim -> share); more, or a count the caller does not know, goes to Triton (its one-call map). Measured on
# the H200 (docs/scripts/flash_bench.py --mode mass; docs/benchmarks.md, "The pivotal map on flash"):
# head dim 128, 128K: flash + map 0.85x Triton's time with 4 of 32 heads mapped, 0.96-0.99x with 8,
# 1.5x with all 32 (Triton's one-pass map); head dim 64 (two passes on both), 128K: 0.91-0.99x at every
# share.
FLASH_MASS_MAX_SHARE = {128: 0.25, 64: 1.0}
# With the layer's kept share of its causal blocks known on the host (``kept_share``: the synced prefill
# path reads it with its one host read per layer, ``bench kernel`` from its layout): per head dim, steps
# (from these keys, flash from this kept share), the last step at or below the keys applies, none:
# ours. Flash's call costs more that does not shrink with the kept blocks (straight-line fits of the
# session 10 grid, Llama shapes: 16K 0.44 ms + 3.3 ms x share on flash, 0.25 + 4.7 on ours; 32K 0.80 +
# 13.9 against 0.45 + 18.1), so it pays from a share that falls with length: the crossovers of those
# fits, 0.58 at 8K, 0.14 at 16K, 0.08 at 32K, none from 64K (flash faster at 0.05).
AUTO_FLASH_KEPT_SHARE_STEPS = {128: ((8192, 0.6), (16384, 0.15), (32768, 0.08), (65536, 0.0)),
                               64: ((131072, 0.1),)}

_override: Backend | None = None
_recorders: list[Counter] = []
_paused = 0  # inside uncounted()


def set_backend(backend: Backend | str | None) -> None:
    """Force a backend for every later call (``None`` restores the automatic rule)."""
    global _override
    _override = None if backend is None else Backend(backend)


@contextmanager
def use_backend(backend: Backend | str) -> Iterator[None]:
    """Force a backend inside a ``with`` block (tests)."""
    global _override
    saved = _override
    _override = Backend(backend)
    try:
        yield
    finally:
        _override = saved


def requested_backend() -> Backend | None:
    """The explicit choice (override, else the environment variable), or None."""
    if _override is not None:
        return _override
    env = os.environ.get(ENV_VAR)
    return Backend(env) if env else None


def select_backend(t: torch.Tensor) -> Backend:
    """Triton or the twin for the kernels other than attention, on ``t``'s device (module docstring)."""
    chosen = requested_backend()
    if chosen in (Backend.TRITON, Backend.REFERENCE):
        return chosen
    return Backend.TRITON if t.is_cuda else Backend.REFERENCE


def flash_unavailable(device: torch.device | str | None = None) -> str | None:
    """Why the flash backend cannot run on ``device`` (a CUDA device, by default the current one),
    or None. Never raises; on CPU it says so."""
    device = torch.device("cuda" if device is None else device)
    if device.type != "cuda":
        return "the flash backend needs a CUDA GPU"
    from .flash import flash_unavailable as why

    return why(device)


def require_flash(device: torch.device | str | None = None) -> None:
    """``ConfigError`` (one line) unless the flash backend can run on ``device``."""
    reason = flash_unavailable(device)
    if reason:
        raise ConfigError(f"kernel flash: {reason}")


class Geometry(NamedTuple):
    """What the backend rule reads of a layout (a ``BlockLayout`` serves as one too)."""

    nq: int
    nk: int
    block_size: int


def auto_backend(q: torch.Tensor, layout: BlockLayout | Geometry, return_block_mass: bool = False,
                 mapped_share: float | None = None, kept_share: float | None = None) -> Backend:
    """``auto`` on a CUDA attention call: flash-attn-4 where it measured faster (the constants
    above), Triton otherwise and wherever flash cannot run; with the block-mass map the same where
    at most ``FLASH_MASS_MAX_SHARE`` of the heads are mapped (``mapped_share``; None: not known).
    ``kept_share``: the layout's kept share of its causal blocks, when known on the host
    (``AUTO_FLASH_KEPT_SHARE_STEPS``; unknown: ``AUTO_FLASH_MIN_KEYS``)."""
    dim = q.shape[-1]
    if dim not in AUTO_FLASH_HEAD_DIMS or layout.block_size not in AUTO_FLASH_BLOCK_SIZES:
        return Backend.TRITON
    if kept_share is None:
        if layout.nk < AUTO_FLASH_MIN_KEYS[dim]:
            return Backend.TRITON
    else:
        steps = [least for keys, least in AUTO_FLASH_KEPT_SHARE_STEPS.get(dim, ()) if keys <= layout.nk]
        if not steps or kept_share < steps[-1]:
            return Backend.TRITON
    if return_block_mass and (1.0 if mapped_share is None else mapped_share) > FLASH_MASS_MAX_SHARE.get(dim, 0.0):
        return Backend.TRITON
    from . import flash

    if flash.flash_unavailable(q.device) or flash.call_unsupported(q, layout):
        return Backend.TRITON
    return Backend.FLASH


def attention_backend(q: torch.Tensor, layout: BlockLayout | Geometry, return_block_mass: bool = False,
                      mapped_share: float | None = None, kept_share: float | None = None) -> Backend:
    """The kernel one ``sparse_attention`` call runs on: triton, reference or flash (module docstring).
    A ``Geometry`` in place of the layout asks before the layout exists (same answer).
    ``mapped_share``: the share of heads whose map is asked for, ``kept_share``: the layout's kept
    share of causal blocks, each if known on the host (``auto_backend``)."""
    chosen = requested_backend()
    if chosen is None:
        chosen = Backend.AUTO if q.is_cuda else Backend.REFERENCE
    if chosen is Backend.AUTO:
        return auto_backend(q, layout, return_block_mass, mapped_share, kept_share) if q.is_cuda \
            else Backend.REFERENCE
    if chosen is Backend.FLASH:
        require_flash(q.device)
        from .flash import call_unsupported

        reason = call_unsupported(q, layout)
        if reason:
            raise ConfigError(f"kernel flash: {reason}")
        return Backend.FLASH
    return chosen


@contextmanager
def record_backends() -> Iterator[Counter]:
    """Count the attention calls per backend (``{"triton": 2, "flash": 1}``) inside the block."""
    counts: Counter = Counter()
    _recorders.append(counts)
    try:
        yield counts
    finally:
        _recorders[:] = [c for c in _recorders if c is not counts]


@contextmanager
def uncounted() -> Iterator[None]:
    """No attention call inside the block is counted by ``record_backends`` (a step recorded as a
    CUDA graph runs its calls when recorded, not when replayed: its caller counts with
    ``count_call`` once per replay instead)."""
    global _paused
    _paused += 1
    try:
        yield
    finally:
        _paused -= 1


def count_call(backend: Backend) -> None:
    """One attention call on ``backend``, for every open ``record_backends`` block."""
    if not _paused:
        for counts in _recorders:
            counts[backend.value] += 1


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockLayout, *,
                     scale: float | None = None, return_block_mass: bool = False,
                     mass_heads: torch.Tensor | None = None, num_mass_heads: int | None = None,
                     mass_pass: str = "auto", kept_share: float | None = None):
    """Block-sparse causal attention: q ``[B, H, Nq, D]``, k/v ``[B, H_kv, Nk, D]`` -> out
    ``[B, H, Nq, D]`` (q's dtype), plus the mass map ``[B, H, nqb, nkb]`` fp32 when asked
    (only for the heads of the bool ``[B, H]`` ``mass_heads`` if given; zeros elsewhere;
    ``num_mass_heads``: how many those are, when the caller knows, which saves a host sync;
    ``mass_pass``: the Triton map's pass, ``block_sparse_attention``'s argument: ``"two"`` never
    reads the device from the host, so a CUDA graph can record it; ``kept_share``: the layout's
    kept share of its causal blocks, when the caller knows it on the host, for ``auto``'s rule).
    The backend: ``attention_backend``; on flash the map takes two passes whatever ``mass_pass`` says
    (module docstring)."""
    share = 1.0 if mass_heads is None else (None if num_mass_heads is None else num_mass_heads / mass_heads.numel())
    backend = attention_backend(q, layout, return_block_mass, share, kept_share)
    count_call(backend)
    if backend is Backend.FLASH:
        from . import flash

        if return_block_mass:
            return flash.flash_sparse_attention_with_mass(q, k, v, layout, scale=scale, mass_heads=mass_heads)
        return flash.flash_sparse_attention(q, k, v, layout, scale=scale)
    if backend is Backend.TRITON:
        from .block_sparse import block_sparse_attention

        return block_sparse_attention(q, k, v, layout, scale=scale, return_block_mass=return_block_mass,
                                      mass_heads=mass_heads, num_mass_heads=num_mass_heads, mass_pass=mass_pass)
    if not return_block_mass:
        return _masked_sdpa(q, k, v, layout, scale)
    if mass_heads is None:
        res = ref.block_sparse_attention_ref(q, k, v, layout.to_dense(), layout.block_size, scale, True)
        return res[0].to(q.dtype), res[1]
    return _masked_sdpa(q, k, v, layout, scale), _mass_of_heads(q, k, v, layout, scale, mass_heads)


def _mass_of_heads(q, k, v, layout: BlockLayout, scale, mass_heads: torch.Tensor) -> torch.Tensor:
    """Reference mass maps for the selected heads only (the others stay zero)."""
    mass = torch.zeros(layout.shape, dtype=torch.float32, device=q.device)
    bi, hi = torch.nonzero(mass_heads.to(q.device), as_tuple=True)
    if bi.numel():
        group = q.shape[1] // k.shape[1]
        sel = lambda t, heads: t[bi, heads][None]  # noqa: E731  [1, n, ...]
        _, m = ref.block_sparse_attention_ref(sel(q, hi), sel(k, hi // group), sel(v, hi // group),
                                              sel(layout.to_dense(), hi), layout.block_size, scale, True)
        mass[bi, hi] = m[0]
    return mass


def _masked_sdpa(q, k, v, layout: BlockLayout, scale: float | None,
                 max_elements: int = 1 << 25) -> torch.Tensor:
    """Reference path without the mass map: torch's fused SDPA with the block mask expanded to
    tokens (same maths as the twin, several times faster on CPU). Rows with nothing kept give 0.

    Works on chunks of whole query blocks so the token mask stays under ``max_elements``
    (``[B, H, rows, keys]``), each chunk against only the keys its last query can see."""
    bsz, heads, nq, _ = q.shape
    bs, nk = layout.block_size, layout.nk
    blocks = layout.to_dense()  # [B, H, nqb, nkb]
    rows = max(bs, max_elements // max(1, bsz * heads * nk) // bs * bs)
    out = torch.empty_like(q)
    for r0 in range(0, nq, rows):
        r1 = min(r0 + rows, nq)
        keys = r1 + (nk - nq)  # the last query of the chunk sees keys [0, keys)
        keep = ref.block_mask_to_token_mask(blocks[:, :, r0 // bs:ref.num_blocks(r1, bs), :ref.num_blocks(keys, bs)],
                                            r1 - r0, keys, bs)
        seen = torch.arange(r0, r1, device=q.device)[:, None] + (nk - nq)  # each row's last visible key
        keep = keep & (torch.arange(keys, device=q.device)[None, :] <= seen)
        chunk = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, r0:r1], k[:, :, :keys], v[:, :, :keys], attn_mask=keep, scale=scale,
            enable_gqa=heads != k.shape[1])
        out[:, :, r0:r1] = torch.nan_to_num(chunk, nan=0.0)
    return out


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int = DEFAULT_BLOCK_SIZE, *,
                    scale: float | None = None, return_block_mass: bool = False):
    """Dense causal attention through the same kernel (a full layout); same returns as above."""
    layout = BlockLayout.dense_causal(q.shape[0], q.shape[1], q.shape[2], k.shape[2], block_size,
                                      q.device)
    return sparse_attention(q, k, v, layout, scale=scale, return_block_mass=return_block_mass)


def block_mass(q: torch.Tensor, k: torch.Tensor, block_size: int, scale: float | None = None,
               chunk_size: int = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """Exact dense causal block-mass map ``[B, H, nqb, nkb]`` fp32 (rows sum to 1).

    ``chunk_size`` bounds the reference twin's extra memory (query rows at once); Triton
    streams over keys and needs no chunking."""
    if select_backend(q) is Backend.TRITON:
        from .block_sparse import block_mass_map

        layout = BlockLayout.dense_causal(q.shape[0], q.shape[1], q.shape[2], k.shape[2],
                                          block_size, q.device)
        return block_mass_map(q, k, layout, scale=scale)
    return ref.block_mass_ref(q, k, block_size, scale, chunk_size)


def last_block_profiles(q: torch.Tensor, k: torch.Tensor, block_size: int,
                        scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Probe ``(vertical, slash)`` profiles, each ``[B, H, Nk]`` fp32."""
    if select_backend(q) is Backend.TRITON:
        from .estimate import last_block_profiles as fn

        return fn(q, k, block_size, scale)
    return ref.last_block_profiles_ref(q, k, block_size, scale)


def last_block_pooled_profiles(q: torch.Tensor, k: torch.Tensor, block_size: int,
                               scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Probe profiles pooled into key blocks (vertical) and offset blocks (slash), each
    ``[B, H, nkb]`` fp32: what the methods decide from (no per-token workspace on Triton)."""
    if select_backend(q) is Backend.TRITON:
        from .estimate import last_block_pooled_profiles as fn

        return fn(q, k, block_size, scale)
    return ref.last_block_pooled_profiles_ref(q, k, block_size, scale)


def pool_blocks_mean(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Block means ``[B, H, N, D]`` -> ``[B, H, nb, D]`` fp32."""
    if select_backend(x) is Backend.TRITON:
        from .estimate import pool_blocks_mean as fn

        return fn(x, block_size)
    return ref.pool_blocks_mean_ref(x, block_size)


def pooled_block_estimate(q: torch.Tensor, k: torch.Tensor, block_size: int,
                          scale: float | None = None) -> torch.Tensor:
    """Pooled causal block-level estimate ``[B, H, nqb, nkb]`` fp32 (query-aware heads)."""
    if select_backend(q) is Backend.TRITON:
        from .estimate import pooled_block_estimate as fn

        return fn(q, k, block_size, scale)
    return ref.pooled_block_estimate_ref(q, k, block_size, scale)


def pooled_estimate_of_means(q_means: torch.Tensor, k: torch.Tensor, nq: int, block_size: int,
                             scale: float | None = None) -> torch.Tensor:
    """``pooled_block_estimate`` from the queries' block means ``[B, H, nqb, D]`` fp32
    (``pool_blocks_mean``) of ``nq`` queries: a recorded decision step reads these, not q."""
    if select_backend(k) is Backend.TRITON:
        from .estimate import pooled_estimate_of_means as fn

        return fn(q_means, k, nq, block_size, scale)
    return ref.pooled_estimate_of_means_ref(q_means, k, nq, block_size, scale)


def probe_column_estimate(q: torch.Tensor, k: torch.Tensor, block_size: int,
                          scale: float | None = None) -> torch.Tensor:
    """Pooled estimate of the probe's column distribution ``[B, H, nkb]`` fp32."""
    if select_backend(q) is Backend.TRITON:
        from .estimate import probe_column_estimate as fn

        return fn(q, k, block_size, scale)
    return ref.probe_column_estimate_ref(q, k, block_size, scale)


def assemble_layout(v_rank: torch.Tensor, s_rank: torch.Tensor, v_count: torch.Tensor, s_count: torch.Tensor,
                    nq: int, nk: int, block_size: int, *, minimal=None, query_aware=None, share=None,
                    tail_first: int | None = None, want_own: bool = False):
    """One layer's block mask, its own vertical-slash mask (``want_own``) and layout draft from
    ranks and counts (arguments: ``reference.assemble_masks_ref``): ``(mask, own or None, draft)``.
    One Triton launch on the Triton backend (``decide.assemble_kernel``), the twins elsewhere."""
    from .layout import BlockLayout, LayoutDraft

    if select_backend(v_rank) is Backend.TRITON:
        from .decide import assemble_triton

        mask, own, counts, ordered, num_full = assemble_triton(
            v_rank, s_rank, v_count, s_count, nq, nk, block_size, minimal=minimal, query_aware=query_aware,
            share=share, tail_first=tail_first, want_own=want_own)
        return mask, own, LayoutDraft(counts, ordered, num_full, block_size, nq, nk)
    mask, own = ref.assemble_masks_ref(v_rank, s_rank, v_count, s_count, nq, nk, block_size, minimal=minimal,
                                       query_aware=query_aware, share=share, tail_first=tail_first)
    return mask, (own if want_own else None), BlockLayout.draft(mask, block_size, nq, nk)


def head_decisions(vertical: torch.Tensor, slash: torch.Tensor, **kw) -> ref.HeadDecisions:
    """Every head's ranks, budgets and decision of one layer from its pooled profiles (arguments:
    ``reference.head_decisions_ref``). One Triton launch on the Triton backend
    (``heads.head_decisions_kernel``), the twin elsewhere."""
    if select_backend(vertical) is Backend.TRITON:
        from .heads import head_decisions_triton

        return head_decisions_triton(vertical, slash, **kw)
    return ref.head_decisions_ref(vertical, slash, **kw)


def coverage_rows(mass: torch.Tensor, gamma: float, wanted: torch.Tensor | None = None):
    """Per row of ``mass`` ``[B, H, R, n]``: the ranks and the count of the fewest blocks reaching
    ``gamma`` of its mass (arguments: ``reference.coverage_rows_ref``); only the heads ``wanted``
    ``[B, H]`` when given. One Triton launch on the Triton backend, the twin elsewhere."""
    if select_backend(mass) is Backend.TRITON:
        from .heads import coverage_rows_triton

        return coverage_rows_triton(mass, gamma, wanted)
    return ref.coverage_rows_ref(mass, gamma, wanted)


def record_pivotals(store: ref.PivotalStore, cluster: torch.Tensor, layer: torch.Tensor, pivotal: torch.Tensor,
                    block_mass: torch.Tensor, own_vs_mask: torch.Tensor, v_blocks: torch.Tensor,
                    s_blocks: torch.Tensor, gamma: float, tau_fb: float, needs_sparser: bool = False) -> None:
    """SharePrefill's record of a layer's pivotal heads into ``store`` (in place, no host sync):
    ``coverage_rows`` of their block-mass maps at ``gamma``, then ``reference.record_pivotals_ref``'s
    writes (its arguments). Two Triton launches on the Triton backend, the twin elsewhere."""
    rank, count = coverage_rows(block_mass, gamma, pivotal)  # the pivotal heads' rows only
    args = (store, cluster, layer, pivotal, rank, count, block_mass, own_vs_mask, v_blocks, s_blocks, tau_fb,
            needs_sparser)
    if select_backend(block_mass) is Backend.TRITON:
        from .heads import record_pivotals_triton

        return record_pivotals_triton(*args)
    return ref.record_pivotals_ref(*args)
