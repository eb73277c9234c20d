"""The ``flash`` backend: flash-attn-4's CuTe-DSL block-sparse kernel, called directly or through FlexAttention.

``flash_sparse_attention`` hands flash-attn-4 the layout as four block lists
(``flex_mask.block_mask_tensors``: partial-block counts and indices, full-block counts and indices) in
one of three ways (``COMPILE``, or ``SHAREDATTN_FLASH_COMPILE=direct|dynamic|static``; see below).
Installed by ``pip install "sharedattn[flash]"``.

What it needs (``flash_unavailable``, checked once per device and mode; ``call_unsupported`` per call):

* a CUDA device of compute capability 9.x (Hopper). flash-attn-4's block-sparse forward also runs
  on sm_100, but there it tiles queries by 2 x 128 and refuses 128-token query blocks, so sm_100 is
  not routed here until it is measured with a 256-token query block;
* ``flash_attn.cute`` and the CuTe DSL's ``cutlass`` package importable. The ``nvidia-cutlass-dsl``
  wheel keeps ``cutlass`` in ``nvidia_cutlass_dsl/dsl_packages`` and adds that folder to
  ``sys.path`` through a ``.pth`` file, which a ``pip install --target`` folder never runs: the
  folder is added here when the package is found without it;
* direct: flash-attn-4's ``interface._flash_attn_fwd`` (a private function: checked by reading the
  installed source for it, its arguments and ``block_sparsity.BlockSparseTensorsTorch``, without
  importing flash-attn-4); dynamic and static: a torch whose inductor has the FLASH backend (2.9 or later);
* per call: fp16/bf16, a head dim of ``FLASH_HEAD_DIMS`` and a block size of ``FLASH_BLOCK_SIZES``
  (what was measured on the H200, or follows from flash-attn-4's Hopper tiles: a 64-token block
  shrinks its tiles to 64), and queries as long as the keys (no chunked prefill, below).

The three ways (``COMPILE_MODES``):

* ``direct`` (default): flash-attn-4's own forward, ``_flash_attn_fwd(q, k, v, causal=True,
  block_sparse_tensors=BlockSparseTensorsTorch(...))``. It takes q/k/v as ``[B, N, H, D]``, which
  ``transpose(1, 2)`` views of ours give without a copy, reads K/V heads through the GQA group itself,
  writes a natural-log log-sum-exp, and does no host sync. Its output comes back as a
  ``[B, H, N, D]`` view of its ``[B, N, H, D]`` tensor: not contiguous, and not copied, since no
  caller needs it contiguous (the dispatcher and the prefill runner read it or copy it into place;
  the transformers integration's ``transpose(1, 2).contiguous()`` then copies nothing). No
  torch.compile: flash-attn-4 compiles its kernel on the first call of each configuration (about
  10 s for the first in a process on the H200); on Hopper it picks its tiles from the head dim and
  the block size, not from the lengths, so a new length reuses it. Measured on the H200 in session 10
  (``docs/scripts/flash_direct.py``, Llama-3.1-8B attention shapes, bf16, block 128): as fast as the
  FlexAttention path or faster at every point (32K keys, density 0.05: 1.32 ms against 2.01 ms;
  128K, 0.05: 13.25 against 14.04 ms), the same output as our Triton kernel within bf16 rounding
  (largest difference 0.0039), and 0.0023 s for the first call at a new length after warm-up (no
  compile per length). That is why it is the default.
* ``dynamic``: ``flex_attention(..., kernel_options={"BACKEND": "FLASH"})`` under
  ``torch.compile(dynamic=True)``; inductor emits a call to the same forward with the block lists and
  the end-aligned causal ``mask_mod`` (partial blocks only). The BlockMask is built inside the
  compiled function from the lengths of q and k, so no length, no list width and no block count is
  baked into the graph (one graph for every length). Session 9 measured about 1 ms per call on top of
  the kernel that does not shrink with the kept blocks.
* ``static``: the same with ``dynamic=False``, one graph per (Nq, Nk) (about 0.4 s each on the H200,
  measured with FLASH: docs/platform notes, issue 15); the full lists are padded to ``nkb`` columns
  so a layer's ``max_kept`` does not recompile, and dynamo's recompile limit is raised to
  ``STATIC_GRAPHS`` for these calls (past the limit dynamo would fall back to eager FlexAttention,
  which materialises the scores).

Queries shorter than the keys (chunked prefill) stay off this backend in every mode
(``call_unsupported``): through FlexAttention the offset would go in as a one-element device
tensor, and on the H200 flash-attn-4 4.0.0b36 does not compile that ``mask_mod`` ("Expected
TensorSSA, but got int" from the CuTe DSL); the direct call has not been measured on them.

``docs/scripts/flash_bench.py`` measures the first call at a new length in every mode.

``return_lse=True`` also returns each row's natural-log log-sum-exp, which flash-attn-4 writes on
every call; ``flash_sparse_attention_with_mass`` makes SharePrefill's block-mass map from it with our
mass pass (``mass_pass.stats_from_lse``, ``launch_block_mass``). torch up to 2.11 hands that
log-sum-exp back through FlexAttention multiplied by ln 2 (``lse_to_natural`` undoes it); the direct
call returns flash-attn-4's own.
"""
from __future__ import annotations

import ast
import contextlib
import functools
import importlib.machinery
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
COMPILE_MODES = ("direct", "dynamic", "static")
COMPILE = os.environ.get(COMPILE_ENV, "direct")  # read at import; tests and benches may set it
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
# direct mode: what it uses of flash_attn.cute (module, name, the keywords it passes to it)
DIRECT_NAMES = (("interface", "_flash_attn_fwd", ("softmax_scale", "causal", "block_sparse_tensors", "return_lse")),
                ("block_sparsity", "BlockSparseTensorsTorch", ("mask_block_cnt", "mask_block_idx", "full_block_cnt",
                                                              "full_block_idx", "block_size")))


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


def _source_definitions(package, module: str) -> dict[str, ast.AST] | None:
    """The top-level functions and classes of ``module`` in the package of spec ``package``, read from
    its source without importing it (nor the package): {} when there is no such module, None when
    there is but without a source to read (then its first call imports it and tells)."""
    found = importlib.machinery.PathFinder.find_spec(f"{package.name}.{module}", package.submodule_search_locations)
    if found is None:
        return {}
    if not (found.origin or "").endswith(".py"):
        return None
    try:
        with open(found.origin, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    return {node.name: node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}


def _fields(node: ast.AST) -> set[str]:
    """A parsed function's parameter names, or a parsed class's annotated fields (a NamedTuple's)."""
    if isinstance(node, ast.FunctionDef):
        return {a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)}
    return {n.target.id for n in node.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


def _direct_missing(package) -> str | None:
    """Why flash-attn-4 (``package``: the spec of ``flash_attn.cute``) lacks what the direct call uses
    (``DIRECT_NAMES``), or None."""
    for module, name, fields in DIRECT_NAMES:
        found = _source_definitions(package, module)
        if found is None:
            continue
        qualified = f"{package.name}.{module}.{name}"
        hint = f"which the direct call uses ({COMPILE_ENV}=dynamic goes through FlexAttention; {INSTALL_HINT})"
        if name not in found:
            return f"flash-attn-4 has no {qualified}, {hint}"
        missing = sorted(set(fields) - _fields(found[name]))
        if missing:
            return f"flash-attn-4's {qualified} has no {', '.join(missing)}, {hint}"
    return None


@functools.lru_cache(maxsize=None)
def _packages_missing(mode: str) -> str | None:
    """Why the packages ``mode`` (one of ``COMPILE_MODES``) needs are not there, or None. Nothing of
    flash-attn-4 is imported (``find_spec`` imports the top-level ``flash_attn`` package only)."""
    try:
        package = importlib.util.find_spec("flash_attn.cute")
    except (ImportError, ValueError):
        package = None
    if package is None or not package.submodule_search_locations:
        return f"flash-attn-4 is not installed ({INSTALL_HINT})"
    if not _cutlass_on_path():
        return f"the CuTe DSL (nvidia-cutlass-dsl) is not installed ({INSTALL_HINT})"
    if mode == "direct":
        return _direct_missing(package)
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
    """Why the flash backend cannot run on ``device`` (default: the current CUDA device) in the
    current mode (``COMPILE``; a mode not known is a reason too), or None when it can. Never raises;
    cheap after the first call per device and mode (cached)."""
    device = torch.device("cuda" if device is None else device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return "the flash backend needs a CUDA GPU"
    missing = _unknown_mode() or _packages_missing(COMPILE)
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
                "4.0.0b36 does not compile the end-aligned causal mask through torch 2.11, and the direct "
                "call is not measured on it)")
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


def _unknown_mode() -> str | None:
    return None if COMPILE in COMPILE_MODES else f"{COMPILE_ENV} must be {one_of(COMPILE_MODES)}, got {COMPILE!r}"


def compile_mode() -> str:
    """``COMPILE``, checked (``ConfigError``)."""
    unknown = _unknown_mode()
    if unknown:
        from .limits import ConfigError

        raise ConfigError(unknown)
    return COMPILE


def _direct(q, k, v, layout: BlockLayout, scale: float, return_lse: bool):
    """flash-attn-4's forward called directly: out ``[B, H, Nq, D]``, a view of its ``[B, Nq, H, D]``
    output (module docstring), and with ``return_lse`` its log-sum-exp ``[B, H, Nq]`` fp32, natural log,
    -inf where not finite (as ``_call_lse``). The full lists are ``nkb`` wide, as measured."""
    from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch
    from flash_attn.cute.interface import _flash_attn_fwd

    num_part, part_idx, num_full, full_idx = block_mask_tensors(layout, full_width=layout.num_kv_blocks)
    sparse = BlockSparseTensorsTorch(mask_block_cnt=num_part, mask_block_idx=part_idx, full_block_cnt=num_full,
                                     full_block_idx=full_idx, block_size=(layout.block_size, layout.block_size))
    out, lse = _flash_attn_fwd(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),  # [B, N, H, D] views
                               softmax_scale=scale, causal=True, block_sparse_tensors=sparse,
                               return_lse=return_lse)[:2]
    out = out.transpose(1, 2)  # [B, H, Nq, D]
    if not return_lse:
        return out
    return out, torch.where(torch.isfinite(lse), lse, float("-inf"))


@on_input_device
def flash_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockLayout, *,
                           scale: float | None = None, return_lse: bool = False):
    """Block-sparse causal attention on flash-attn-4: q ``[B, H, Nq, D]``, k/v ``[B, H_kv, Nk, D]``
    (``Nq <= Nk``, queries end-aligned) -> ``[B, H, Nq, D]`` in q's dtype; the same maths as
    ``block_sparse_attention`` (rows that keep no block give zeros). With ``return_lse``:
    ``(out, lse)``, lse ``[B, H, Nq]`` fp32, the natural-log log-sum-exp of each row's scaled logits
    over its kept keys (``-inf`` for a row that keeps none). In the direct mode (the default) out is a
    view that is not contiguous (``out.transpose(1, 2)`` is; module docstring). No host sync; the
    caller checks availability (``flash_unavailable``, ``call_unsupported``: chunked prefill is not
    run here)."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    mode = compile_mode()
    nq, nk = q.shape[2], k.shape[2]
    if (layout.nq, layout.nk) != (nq, nk) or tuple(layout.counts.shape) != (q.shape[0], q.shape[1],
                                                                              layout.num_q_blocks):
        raise ValueError(f"layout {layout.shape} (nq={layout.nq}, nk={layout.nk}) does not match q/k")
    if mode == "direct":
        return _direct(q, k, v, layout, scale, bool(return_lse))
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
