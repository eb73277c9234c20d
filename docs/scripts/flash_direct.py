"""flash-attn-4 called directly against the same kernel through FlexAttention (issue 15's open lever).

    bash docs/scripts/h200_flash.sh python3 docs/scripts/flash_direct.py OUT.json [N ...]

The `flash` backend reaches flash-attn-4's Hopper kernel through ``flex_attention(...,
kernel_options={"BACKEND": "FLASH"})``, which builds a ``BlockMask`` and goes through a compiled
call on every layer; on the H200 that path costs about 1 ms per call that does not shrink with the
kept blocks (session 9: time ~ 1.0 ms + 13.6 ms x density at 32K on Llama shapes), which keeps it
below 0.95x cuDNN per kept block at 32K and low density. flash-attn-4's own interface takes the
same four block tensors (``flash_attn.cute.block_sparsity.BlockSparseTensorsTorch``: partial-block
counts and indices, full-block counts and indices, here from ``flex_mask.block_mask_tensors``) and
q/k/v in (batch, seqlen, heads, dim) order, which a transposed view of ours gives without a copy.

Per length (Llama-3.1-8B attention shapes: 32 / 8 heads, head dim 128, bf16, block 128) and
density (random per-head causal masks, ``kernels.bench.random_mask``): cuDNN dense, our Triton
kernel, the flash backend (FlexAttention), and the direct call with ``causal=True``, medians of
CUDA-event timings in one process; the direct call's largest difference from our kernel's output;
and its first call at a new length after warm-up (does it compile per length?). A variant that
fails records its error and the rest go on. Needs CUDA and flash-attn-4 (docs/scripts/h200_flash.sh).
"""
from __future__ import annotations

import json
import platform
import sys
import time

import torch

from sharedattn import kernels
from sharedattn.kernels import bench, flash
from sharedattn.kernels.flex_mask import block_mask_tensors
from sharedattn.kernels.layout import BlockLayout

SHAPE = bench.BenchShape(32, 8, 128)
DENSITIES = (0.05, 0.1, 0.3, 1.0)


def _direct(q, k, v, layout: BlockLayout, scale: float):
    """flash-attn-4's forward on our layout: ``[B, H, N, D]`` out (a view of its BSHD output)."""
    from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch
    from flash_attn.cute.interface import _flash_attn_fwd

    num_part, part_idx, num_full, full_idx = block_mask_tensors(layout, full_width=layout.num_kv_blocks)
    sparse = BlockSparseTensorsTorch(num_part, part_idx, num_full, full_idx,
                                     block_size=(layout.block_size, layout.block_size))
    out = _flash_attn_fwd(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale,
                          causal=True, block_sparse_tensors=sparse)[0]
    return out.transpose(1, 2)


def _timed(fn) -> tuple[float | None, str | None]:
    try:
        return bench.time_ms(fn, min_total_ms=200.0, max_reps=20), None
    except Exception as exc:  # noqa: BLE001 - a failing variant is a result here
        return None, f"{type(exc).__name__}: {str(exc)[:300]}"


def _cudnn_ms(q, k, v, scale: float) -> float | None:
    """cuDNN's dense causal attention on the same q, k, v (K/V heads repeated for GQA)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    group = q.shape[1] // k.shape[1]
    k_rep, v_rep = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)

    def cudnn():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k_rep, v_rep, is_causal=True, scale=scale)
    return _timed(cudnn)[0]


def one_length(n: int, device) -> list[dict]:
    q, k, v = bench.make_inputs(SHAPE, n, device)
    scale = SHAPE.head_dim ** -0.5
    dense_ms = _cudnn_ms(q, k, v, scale)
    gen = torch.Generator(device=device).manual_seed(n)
    rows = []
    for d in DENSITIES:
        layout = BlockLayout.from_dense(bench.random_mask(SHAPE, n, d, gen, device), SHAPE.block_size)
        row = {"n": n, "target_density": d, "density": layout.density(), "cudnn_ms": dense_ms, "ms": {},
               "errors": {}}
        for name, fn in (("triton", lambda: kernels.sparse_attention(q, k, v, layout, scale=scale)),
                         ("flex_flash", lambda: flash.flash_sparse_attention(q, k, v, layout, scale=scale)),
                         ("direct", lambda: _direct(q, k, v, layout, scale))):
            with kernels.use_backend("triton" if name == "triton" else "flash"):
                row["ms"][name], err = _timed(fn)
            if err:
                row["errors"][name] = err
        if row["ms"]["direct"] is not None:
            with kernels.use_backend("triton"):
                ours = kernels.sparse_attention(q, k, v, layout, scale=scale)
            row["direct_max_abs_diff"] = float((_direct(q, k, v, layout, scale).float() - ours.float()).abs().max())
        row["x_cudnn"] = {name: (dense_ms * row["density"] / ms if ms and dense_ms else None)
                          for name, ms in row["ms"].items()}
        print(json.dumps({key: row[key] for key in ("n", "density", "ms", "x_cudnn", "errors")}
                         | {"diff": row.get("direct_max_abs_diff")}), flush=True)
        rows.append(row)
    return rows


def first_call(n: int, device) -> dict:
    """Seconds of the direct call at ``n`` and then at ``n + 1000`` (a new length) after warm-up."""
    out = {}
    for length in (n, n + 1000):
        q, k, v = bench.make_inputs(SHAPE, length, device)
        layout = BlockLayout.from_dense(bench.random_mask(SHAPE, length, 0.2, torch.Generator(device=device)
                                                          .manual_seed(1), device), SHAPE.block_size)
        start = time.perf_counter()
        try:
            _direct(q, k, v, layout, SHAPE.head_dim ** -0.5)
            torch.cuda.synchronize()
            out[str(length)] = time.perf_counter() - start
        except Exception as exc:  # noqa: BLE001
            out[str(length)] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return out


def main() -> None:
    out_file, lengths = sys.argv[1], [int(a) for a in sys.argv[2:]] or [32768, 65536, 131072]
    device = torch.device("cuda")
    why = flash.flash_unavailable(device)
    report = {"command": "python docs/scripts/flash_direct.py " + " ".join(sys.argv[1:]),
              "machine": f"{torch.cuda.get_device_name(device)} (torch {torch.__version__}, {platform.node()})",
              "flash": why or "available", "rows": [], "first_call_s": None}
    print(report["command"], report["machine"], "flash:", report["flash"], sep="\n", flush=True)
    if why is None:
        report["first_call_s"] = first_call(16384, device)
        print("first call", report["first_call_s"], flush=True)
        for n in lengths:
            report["rows"].extend(one_length(n, device))
    with open(out_file, "w") as f:
        json.dump(report, f, indent=1)
    print("wrote", out_file)


if __name__ == "__main__":
    main()
