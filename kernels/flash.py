"""The ``flash`` backend: flash-attn-4's CuTe-DSL kernel through FlexAttention's FLASH backend.

``flash_sparse_attention`` turns the layout into a FlexAttention ``BlockMask`` (``flex_mask.py``)
and runs ``flex_attention(..., kernel_options={"BACKEND": "FLASH"})`` compiled with
``torch.compile``; inductor emits a call to flash-attn-4's forward with the block lists and the
end-aligned causal ``mask_mod`` (partial blocks only). Installed by ``pip install "sharedattn[flash]"``.

What it needs (``flash_unavailable``, checked once per device; ``call_unsupported`` per call):

* a CUDA device of compute capability 9.x (Hopper). flash-attn-4's block-sparse forward also runs
  on sm_100, but there it tiles queries by 2 x 128 and refuses 128-token query blocks, so sm_100 is
  not routed here until it is measured with a 256-token query block;
* ``flash_attn.cute`` and the CuTe DSL's ``cutlass`` package importable. The ``nvidia-cutlass-dsl``
  wheel keeps ``cutlass`` in ``nvidia_cutlass_dsl/dsl_packages`` and adds that folder to
  ``sys.path`` through a ``.pth`` file, which a ``pip install --target`` folder never runs: the
  folder is added here when the package is found without it;
* a torch whose inductor has the FLASH backend (2.9 or later);
* per call: fp16/bf16, a head dim of ``FLASH_HEAD_DIMS`` and a block size of ``FLASH_BLOCK_SIZES``
  (what was measured on the H200, or follows from flash-attn-4's Hopper tiles: a 64-token block
  shrinks its tiles to 64).

Recompiling per prompt length (``COMPILE``, or ``SHAREDATTN_FLASH_COMPILE=dynamic|static``):

* ``dynamic`` (default): ``torch.compile(dynamic=True)``; the BlockMask is built inside the compiled
  function from the lengths of q and k, so no length, no list width and no block count is baked
  into the graph (one graph for every length; flash-attn-4 caches its kernel by dtype, head dim
  and mask, not by length). Queries shorter than the keys (chunked prefill) would get their offset
  as a one-element device tensor, but on the H200 flash-attn-4 4.0.0b36 does not compile that
  ``mask_mod`` ("Expected TensorSSA, but got int" from the CuTe DSL), so ``call_unsupported``
  keeps those calls off this backend.
* ``static``: ``dynamic=False``, one graph per (Nq, Nk) (about 0.4 s each on the H200, measured with
  FLASH: docs/platform notes, issue 15); the full lists are padded to ``nkb`` columns so a layer's
  ``max_kept`` does not recompile, and dynamo's recompile limit is raised to ``STATIC_GRAPHS``
  for these calls (past the limit dynamo would fall back to eager FlexAttention, which
  materialises the scores).

``docs/scripts/flash_bench.py`` measures the first call at a new length in both modes.

``return_lse=True`` also returns each row's natural-log log-sum-exp, which flash-attn-4 writes on
every call; ``flash_sparse_attention_with_mass`` makes SharePrefill's block-mass map from it with our
mass pass (``mass_pass.stats_from_lse``, ``launch_block_mass``). torch up to 2.11 hands that
log-sum-exp back multiplied by ln 2 (``lse_to_natural`` undoes it).
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
import sys

import torch

from .device import on_input_device
from .flex_mask import block_mask_from_tensors, block_mask_tensors, end_aligned_causal
from .layout import BlockLayout
from .limits import one_of

COMPILE_ENV = "SHAREDATTN_FLASH_COMPILE"
COMPILE_MODES = ("dynamic", "static")
COMPILE = os.environ.get(COMPILE_ENV, "dynamic")  # read at import; tests and benches may set it
STATIC_GRAPHS = 256  # static mode: graphs (distinct lengths) kept before dynamo gives up
# dynamic mode: graphs kept for distinct (dtype, heads, KV heads, head dim, block size, scale) in one
# process; dynamo's default (8) was measured too few on the H200 by the GPU suite, which runs more
# shapes than that and then failed with "recompile limit" under fullgraph
DYNAMIC_GRAPHS = 64
FLASH_CAPABILITIES = (9,)  # compute capability majors routed to flash-attn-4 (see the docstring)
FLASH_HEAD_DIMS = (64, 128)
FLASH_BLOCK_SIZES = (64, 128)
FLASH_DTYPES = (torch.float16, torch.bfloat16)
INSTALL_HINT = "pip install 'sharedattn[flash]'"


def _cutlass_on_path() -> bool:
    """Whether ``cutlass`` imports; puts ``nvidia_cutlass_dsl/dsl_packages`` on ``sys.path`` first
    when only the wheel's folder is there (a ``--target`` install)."""
    if importlib.util.find_spec("cutlass") is not None:
        return True
    spec = importlib.util.find_spec("nvidia_cutlass_dsl")
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        packages = os.path.join(root, "dsl_packages")
        if os.path.isdir(os.path.join(packages, "cutlass")):
            sys.path.insert(0, packages)
            importlib.invalidate_caches()
            return importlib.util.find_spec("cutlass") is not None
    return False


@functools.lru_cache(maxsize=None)
def _packages_missing() -> str | None:
    try:
        if importlib.util.find_spec("flash_attn.cute") is None:
            return f"flash-attn-4 is not installed ({INSTALL_HINT})"
    except (ImportError, ValueError):
        return f"flash-attn-4 is not installed ({INSTALL_HINT})"
    if not _cutlass_on_path():
        return f"the CuTe DSL (nvidia-cutlass-dsl) is not installed ({INSTALL_HINT})"
    if importlib.util.find_spec("torch._inductor.kernel.flex.flex_flash_attention") is None:
        return f"torch {torch.__version__} has no FlexAttention FLASH backend (torch 2.9 or later)"
    return None


@functools.lru_cache(maxsize=None)
def _device_unsupported(index: int) -> str | None:
    major, minor = torch.cuda.get_device_capability(index)
    if major not in FLASH_CAPABILITIES:
        name = torch.cuda.get_device_name(index)
        return f"{name} (sm_{major}{minor}) is not a GPU the flash backend runs on (Hopper, sm_90)"
    return None


def flash_unavailable(device: torch.device | str | None = None) -> str | None:
    """Why the flash backend cannot run on ``device`` (default: the current CUDA device), or
    None when it can. Cheap after the first call per device (cached)."""
    device = torch.device("cuda" if device is None else device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return "the flash backend needs a CUDA GPU"
    missing = _packages_missing()
    if missing:
        return missing
    return _device_unsupported(device.index if device.index is not None else torch.cuda.current_device())


def call_unsupported(q: torch.Tensor, layout: BlockLayout) -> str | None:
    """Why this call's shapes cannot run on flash-attn-4 (None: they can); no device work."""
    if q.dtype not in FLASH_DTYPES:
        return f"dtype {q.dtype} (flash runs fp16 and bf16)"
    if q.shape[-1] not in FLASH_HEAD_DIMS:
        return f"head dim {q.shape[-1]} (flash runs {one_of(FLASH_HEAD_DIMS)})"
    if layout.block_size not in FLASH_BLOCK_SIZES:
        return f"block size {layout.block_size} (flash runs {one_of(FLASH_BLOCK_SIZES)})"
    if layout.nq != layout.nk:  # measured on the H200: the CuTe DSL rejects the offset mask_mod
        return (f"queries shorter than keys ({layout.nq} of {layout.nk}, chunked prefill: flash-attn-4 "
                "4.0.0b36 does not compile the end-aligned causal mask through torch 2.11)")
    return None


def _flex(q, k, v, num_part, part_idx, num_full, full_idx, offset, block_size: int, scale: float,
          return_lse: bool):
    """The compiled bodies' shared part: the BlockMask is made here so its lengths are q's and k's own
    (symbolic under ``dynamic=True``). ``offset`` is None (equal lengths), an int (static) or a [1]
    tensor. ``return_lse``: ``(out, AuxOutput)`` with FlexAttention's log-sum-exp ``[B, H, Nq]`` fp32
    (FLASH's template writes one on every call; its base: ``lse_to_natural``)."""
    from torch.nn.attention.flex_attention import AuxRequest, flex_attention

    mask_mod = end_aligned_causal(0 if offset is None else offset)
    bm = block_mask_from_tensors((num_part, part_idx, num_full, full_idx), block_size, q.shape[2], k.shape[2],
                                 mask_mod)
    return flex_attention(q, k, v, block_mask=bm, scale=scale, enable_gqa=True, kernel_options={"BACKEND": "FLASH"},
                          return_aux=AuxRequest(lse=True) if return_lse else None)


def _call(q, k, v, num_part, part_idx, num_full, full_idx, offset, block_size: int, scale: float):
    """The compiled body without the log-sum-exp: ``out`` ``[B, H, Nq, D]``."""
    return _flex(q, k, v, num_part, part_idx, num_full, full_idx, offset, block_size, scale, False)


def _call_lse(q, k, v, num_part, part_idx, num_full, full_idx, offset, block_size: int, scale: float,
              lse_scale: float):
    """The compiled body with it: ``(out, lse)``, lse ``[B, H, Nq]`` fp32 = FlexAttention's times
    ``lse_scale`` (``lse_to_natural()``: natural log), -inf (not +inf, not NaN) where a row keeps no
    key, whatever the kernel wrote there."""
    out, aux = _flex(q, k, v, num_part, part_idx, num_full, full_idx, offset, block_size, scale, True)
    lse = aux.lse * lse_scale
    return out, torch.where(torch.isfinite(lse), lse, float("-inf"))


@functools.lru_cache(maxsize=None)
def lse_to_natural() -> float:
    """What turns FlexAttention's FLASH log-sum-exp into natural log: 1, or 1 / ln 2 on a torch whose
    wrapper multiplies it by ln 2. flash-attn-4 writes natural log; the wrapper converts its Triton
    kernel's log2 statistics with a factor ln 2, and up to torch 2.11 applied that to FLASH's too
    (read in 2.11.0's torch/nn/attention/flex_attention.py: ``lse * ln2`` for every backend). The fix
    (pytorch/pytorch#181645) decides per backend (``stats_are_log2``, present in 2.13): the wrapper's
    source says which one is installed; without the source, torch 2.13 or later counts as fixed."""
    import inspect

    from torch.nn.attention import flex_attention as flex

    try:
        fixed = "stats_are_log2" in inspect.getsource(flex.flex_attention)
    except (OSError, TypeError):
        fixed = torch.__version__ >= (2, 13)
    return 1.0 if fixed else 1.0 / math.log(2.0)


@functools.lru_cache(maxsize=None)
def _compiled(mode: str, backend: str | object = "inductor", return_lse: bool = False):
    """``backend``: inductor for real runs; the CPU tests pass a recording backend to count graphs.
    ``return_lse``: the body that also returns the log-sum-exp. The two bodies are two functions, so
    dynamo keeps their graphs and counts their recompiles apart: one compiled function per (mode,
    return_lse), each with the graphs it had before (dynamic: one per head configuration; static: one
    per length), and a map-asking call never recompiles the plain one or eats into its limit."""
    body = _call_lse if return_lse else _call
    return torch.compile(body, dynamic=mode == "dynamic", fullgraph=True, backend=backend)


@contextlib.contextmanager
def _dynamo_settings(mode: str):
    """Around every call. dynamic: the Python ints and floats (block size, scale) stay constants of
    the graph and only tensor sizes are symbolic (FLASH's template cannot inline a symbolic scale),
    each size its own symbol (no duck sizing: a block count that happens to equal the number of
    heads, which FlexAttention keeps static, would otherwise be baked in), and room for one graph
    per head configuration. static: room for one graph per prompt length."""
    import torch.fx.experimental._config as fx_config

    config = torch._dynamo.config
    if mode == "dynamic":
        with config.patch(specialize_int=True, specialize_float=True, recompile_limit=DYNAMIC_GRAPHS,
                          accumulated_recompile_limit=4 * DYNAMIC_GRAPHS), fx_config.patch(use_duck_shape=False):
            yield
        return
    with config.patch(recompile_limit=STATIC_GRAPHS, accumulated_recompile_limit=4 * STATIC_GRAPHS):
        yield


def compile_mode() -> str:
    if COMPILE not in COMPILE_MODES:
        from .limits import ConfigError

        raise ConfigError(f"{COMPILE_ENV} must be dynamic or static, got {COMPILE!r}")
    return COMPILE


@on_input_device
def flash_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockLayout, *,
                           scale: float | None = None, return_lse: bool = False):
    """Block-sparse causal attention on flash-attn-4: q ``[B, H, Nq, D]``, k/v ``[B, H_kv, Nk, D]``
    (``Nq <= Nk``, queries end-aligned) -> ``[B, H, Nq, D]`` in q's dtype; the same maths as
    ``block_sparse_attention`` (rows that keep no block give zeros). With ``return_lse``:
    ``(out, lse)``, lse ``[B, H, Nq]`` fp32, the natural-log log-sum-exp of each row's scaled logits
    over its kept keys (``-inf`` for a row that keeps none). No host sync; the caller checks
    availability (``flash_unavailable``, ``call_unsupported``)."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    mode = compile_mode()
    nq, nk = q.shape[2], k.shape[2]
    if (layout.nq, layout.nk) != (nq, nk) or tuple(layout.counts.shape) != (q.shape[0], q.shape[1],
                                                                              layout.num_q_blocks):
        raise ValueError(f"layout {layout.shape} (nq={layout.nq}, nk={layout.nk}) does not match q/k")
    tensors = block_mask_tensors(layout, full_width=layout.num_kv_blocks if mode == "static" else None)
    offset = None
    if nk != nq:
        offset = nk - nq if mode == "static" else torch.full((1,), nk - nq, dtype=torch.int32, device=q.device)
    args = (q, k, v, *tensors, offset, layout.block_size, scale) + ((lse_to_natural(),) if return_lse else ())
    with _dynamo_settings(mode):
        return _compiled(mode, return_lse=bool(return_lse))(*args)


@on_input_device
def flash_sparse_attention_with_mass(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockLayout, *,
                                     scale: float | None = None, mass_heads: torch.Tensor | None = None):
    """``(out, mass)`` in two passes: flash-attn-4 for every head, with its log-sum-exp, then the
    block-mass pass of ``mass_pass.launch_block_mass`` for the heads of ``mass_heads`` (bool
    ``[B, H]``; every head when None). The map ``[B, H, nqb, nkb]`` fp32 is the one
    ``block_sparse_attention(..., return_block_mass=True)`` makes (zeros for the other heads, whose
    programs read nothing); the pass normalises with the statistics ``stats_from_lse`` derives from
    the log-sum-exp. No host sync; same checks as ``flash_sparse_attention``."""
    from .attn_fwd import mass_config
    from .block_sparse import check_mass_heads
    from .mass_pass import LOG2E, launch_block_mass, stats_from_lse

    check_mass_heads(mass_heads, q)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    out, lse = flash_sparse_attention(q, k, v, layout, scale=scale, return_lse=True)
    cfg = mass_config(layout.block_size, q.shape[-1], q.is_cuda)
    return out, launch_block_mass(q, k, stats_from_lse(lse), layout, scale * LOG2E, cfg, mass_heads)
