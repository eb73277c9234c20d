"""Side costs timed by ``sharedattn bench kernel``: the estimation kernels for a whole layer, and
the block-mass map (one pass vs two passes) of a pivotal layer. GPU only; see docs/benchmarks.md.
"""
from __future__ import annotations

import torch

from .bench import BenchShape, make_inputs, time_ms
from .layout import BlockLayout


def estimation_ms(q, k, block_size: int) -> dict[str, float]:
    """Times of the estimation kernels for all heads of one layer."""
    from . import estimate as est

    parts = {
        "last_block_profiles": lambda: est.last_block_profiles(q, k, block_size),
        "pool_q_k": lambda: (est.pool_blocks_mean(q, block_size), est.pool_blocks_mean(k, block_size)),
        "pooled_block_estimate": lambda: est.pooled_block_estimate(q, k, block_size),
        "probe_column_estimate": lambda: est.probe_column_estimate(q, k, block_size),
    }
    res = {name: time_ms(fn) for name, fn in parts.items()}

    def everything():
        est.last_block_profiles(q, k, block_size)
        est.pooled_block_estimate(q, k, block_size)
        est.probe_column_estimate(q, k, block_size)
    res["all"] = time_ms(everything)
    return res


def block_mass_ms(shape: BenchShape, n: int, device: torch.device, mapped_heads: int = 11) -> dict:
    """Cost of the block-mass map at length ``n`` on a dense causal layout (a pivotal layer:
    ``mapped_heads`` of the heads ask for their map): forward alone, forward + one-pass map,
    forward + two-pass map, in ms, and how far the two maps differ."""
    from .block_sparse import block_sparse_attention

    q, k, v = make_inputs(shape, n, device)
    lay = BlockLayout.dense_causal(shape.batch, shape.heads, n, n, shape.block_size, device)
    wanted = torch.zeros(shape.batch, shape.heads, dtype=torch.bool, device=device)
    wanted[:, :mapped_heads] = True
    out = torch.empty_like(q)
    run = lambda mode: block_sparse_attention(q, k, v, lay, out=out, return_block_mass=mode is not None,  # noqa: E731, F821 - F821: ruff misreads the later del
                                              mass_heads=wanted, mass_pass=mode or "auto")
    res = {"n": n, "mapped_heads": mapped_heads,
           **{f"{mode or 'forward'}_ms": time_ms(lambda m=mode: run(m)) for mode in (None, "one", "two")}}
    res["max_abs_diff"] = float((run("one")[1] - run("two")[1]).abs().max().item())
    del q, k, v, out
    torch.cuda.empty_cache()
    return res
