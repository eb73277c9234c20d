"""Where the time of a SharePrefill layer with pivotal heads goes (H200 diagnosis, issue 14).

    python docs/scripts/pivotal_cost.py synth [N] [PIVOTAL] [DENSITY]
    python docs/scripts/pivotal_cost.py model MODEL LOOKUP.json N

``synth``: Qwen2.5-Coder-0.5B attention shape (14 query / 2 KV heads, head dim 64, bf16, block
128), random kept blocks at DENSITY (diagonal and block 0 always kept) for the sparse heads and
every causal block for PIVOTAL heads. Times (median, CUDA events) the kernel without the map, with
the one-pass and the two-pass map of the pivotal heads (the two-pass one also with its rows split
over several programs, ``mass_pass.MASS_SPLIT``, and with several tiles reduced at once,
``mass_pass.MASS_COLS``), the split variant (pivotal heads through
cuDNN with its log-sum-exp plus the mass pass over their blocks, the others through our kernel),
the estimation kernels, and record_pivotals; cuDNN dense of the whole layer beside them.

``model``: one shareprefill prefill of a passkey prompt with CUDA events around the pieces of every
layer (estimation, decision step, kernel, record_pivotals), grouped by layers with and without
pivotal heads. The estimation kernels run inside the decision step and record_pivotals inside its
own step, both replayed from CUDA graphs after the first layer of a length: there their own events
fire only at that first layer; "decision step" and "record step" time the replays.
"""
from __future__ import annotations

import statistics
import sys
from collections import defaultdict

import torch

from sharedattn import kernels
from sharedattn.kernels.bench import time_ms
from sharedattn.kernels.layout import BlockLayout
from sharedattn.kernels.reference import causal_block_mask, num_blocks


def _inputs(h: int, hkv: int, d: int, bs: int, n: int, n_piv: int, density: float, sink: bool = True):
    """Random bf16 q/k/v and a layout: random kept blocks at ``density`` (the diagonal kept, and
    block 0 with ``sink``) for most heads, every causal block for ``n_piv`` evenly spread pivotal heads."""
    torch.manual_seed(0)
    dev = torch.device("cuda")
    q = torch.randn(1, h, n, d, device=dev, dtype=torch.bfloat16)
    k = torch.randn(1, hkv, n, d, device=dev, dtype=torch.bfloat16)
    v = torch.randn(1, hkv, n, d, device=dev, dtype=torch.bfloat16)
    nb = num_blocks(n, bs)
    causal = causal_block_mask(n, n, bs, dev)
    mask = (torch.rand(1, h, nb, nb, device=dev) < density) | torch.eye(nb, dtype=torch.bool, device=dev)
    mask[..., 0] |= sink
    pivotal = torch.zeros(1, h, dtype=torch.bool, device=dev)
    pivotal[0, torch.arange(n_piv) * (h // max(n_piv, 1))] = True
    mask = torch.where(pivotal[..., None, None], causal, mask) & causal
    return q, k, v, mask, pivotal, BlockLayout.from_dense(mask, bs, n, n)


def synth(n: int = 32768, n_piv: int = 2, density: float = 0.48) -> None:
    from sharedattn.analysis.method.sharing import SharingState

    h, hkv, d, bs = 14, 2, 64, 128
    q, k, v, mask, pivotal, layout = _inputs(h, hkv, d, bs, n, n_piv, density)
    dev, nb, scale = q.device, num_blocks(n, bs), d ** -0.5
    print(f"N={n} heads={h} pivotal={n_piv} density={layout.density():.3f}")
    rows = {}
    k_rep, v_rep = k.repeat_interleave(h // hkv, 1), v.repeat_interleave(h // hkv, 1)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def cudnn():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k_rep, v_rep, is_causal=True, scale=scale)

    rows["cudnn dense layer"] = time_ms(cudnn)
    rows["ours, no map"] = time_ms(lambda: kernels.sparse_attention(q, k, v, layout, scale=scale))
    from sharedattn.kernels.block_sparse import block_sparse_attention

    for mode in ("one", "two"):
        rows[f"ours + map ({mode}-pass)"] = time_ms(lambda: block_sparse_attention(
            q, k, v, layout, scale=scale, return_block_mass=True, mass_heads=pivotal, mass_pass=mode))
    from sharedattn.kernels import mass_pass

    default_split, default_cols = mass_pass.MASS_SPLIT, mass_pass.MASS_COLS
    # the two-pass map's rows walked by one program (split 0) or split in shares, and its tiles
    # reduced one by one (cols 1) or several at once (MASS_COLS)
    for split, cols in ((0, 1), (16, 1), (64, 1), (0, 4), (0, 8), (16, 4), (16, 8)):
        mass_pass.MASS_SPLIT, mass_pass.MASS_COLS = split, cols
        rows[f"ours + map (two-pass, split {split}, cols {cols})"] = time_ms(lambda: block_sparse_attention(
            q, k, v, layout, scale=scale, return_block_mass=True, mass_heads=pivotal, mass_pass="two"))
    mass_pass.MASS_SPLIT, mass_pass.MASS_COLS = default_split, default_cols
    from dataclasses import replace

    from sharedattn.kernels.attn_fwd import default_config as forward_config

    # the forward's program order (the pivotal heads' long rows first or not); a config given to the
    # call also sets the map pass's tiles, so these two rows compare with each other, not the above
    for order in ("kv", "heads"):
        c = replace(forward_config(bs, d, True), order=order)
        rows[f"ours + map (two-pass), order {order}"] = time_ms(lambda: block_sparse_attention(
            q, k, v, layout, scale=scale, return_block_mass=True, mass_heads=pivotal, mass_pass="two", config=c))
    # the sparse heads alone (pivotal rows emptied): what the layer costs without its pivotal heads
    empty = BlockLayout(layout.counts * (~pivotal[..., None]).int(), layout.indices,
                        layout.num_full * (~pivotal[..., None]).int(), bs, n, n)
    rows["ours, sparse heads only"] = time_ms(lambda: kernels.sparse_attention(q, k, v, empty, scale=scale))
    idx = torch.nonzero(pivotal[0]).flatten()
    qp, kp, vp = q[:, idx], k_rep[:, idx], v_rep[:, idx]

    def cudnn_lse():
        out = torch.ops.aten._scaled_dot_product_cudnn_attention(qp, kp, vp, None, True, 0.0, True, False,
                                                                 scale=scale)
        return out[0], out[1]

    rows["cudnn pivotal heads + lse"] = time_ms(cudnn_lse)
    _, lse = cudnn_lse()
    print("lse", tuple(lse.shape), lse.dtype, tuple(lse.stride()))
    from sharedattn.kernels.attn_fwd import AttnConfig, default_config
    from sharedattn.kernels.mass_pass import launch_block_mass

    LOG2E = 1.4426950408889634
    stats = torch.stack([lse.reshape(1, len(idx), n).float() * LOG2E,
                         torch.ones(1, len(idx), n, device=dev)], dim=2).contiguous()
    piv_layout = BlockLayout.dense_causal(1, len(idx), n, n, bs, dev)
    cfg = default_config(bs, d, True)
    rows["mass pass from lse (pivotal)"] = time_ms(lambda: launch_block_mass(qp, kp, stats, piv_layout,
                                                                             scale * LOG2E, cfg))
    ref_mass = block_sparse_attention(q, k, v, layout, scale=scale, return_block_mass=True, mass_heads=pivotal,
                                      mass_pass="two")[1][:, idx]
    mass = launch_block_mass(qp, kp, stats, piv_layout, scale * LOG2E, cfg)
    print("mass from lse vs two-pass: max abs diff", float((mass - ref_mass).abs().max()),
          "row sums", float(mass.sum(-1).min()), float(mass.sum(-1).max()))
    rows["profiles (probe)"] = time_ms(lambda: kernels.last_block_profiles(q, k, bs, scale))
    rows["probe column estimate"] = time_ms(lambda: kernels.probe_column_estimate(q, k, bs, scale))
    rows["pooled block estimate"] = time_ms(lambda: kernels.pooled_block_estimate(q, k, bs, scale))
    table = torch.full((1, h), -1, dtype=torch.long)
    table[0, :] = torch.arange(h) % max(n_piv, 1)
    state = SharingState(table)
    state.reset(1, nb, nb, dev)
    full_mass = block_sparse_attention(q, k, v, layout, scale=scale, return_block_mass=True, mass_heads=pivotal)[1]
    vprof = torch.rand(1, h, nb, device=dev)
    cluster, layer0 = state.cluster_row(0, dev), state.layer_index(0, dev)
    rows["record_pivotals"] = time_ms(lambda: state.record_pivotals(cluster, layer0, pivotal, full_mass, mask,
                                                                     vprof, vprof, 0.95, 0.95))
    # GPU time alone: the same calls replayed from a CUDA graph (the gap to eager is host launch cost)
    for name, fn in (("profiles (probe)", lambda: kernels.last_block_profiles(q, k, bs, scale)),
                     ("probe column estimate", lambda: kernels.probe_column_estimate(q, k, bs, scale)),
                     ("pooled block estimate", lambda: kernels.pooled_block_estimate(q, k, bs, scale)),
                     ("record_pivotals", lambda: state.record_pivotals(cluster, layer0, pivotal, full_mass, mask,
                                                                         vprof, vprof, 0.95, 0.95))):
        rows[name + " [graph]"] = time_ms(graphed(fn))
    for cfg_try in ((128, 64, 4, 3), (128, 128, 8, 3), (128, 128, 4, 3), (64, 128, 4, 3), (128, 128, 8, 2),
                    (64, 64, 4, 3)):
        c = AttnConfig(*cfg_try)
        rows[f"mass pass {cfg_try}"] = time_ms(lambda: launch_block_mass(qp, kp, stats, piv_layout,
                                                                         scale * LOG2E, c))
    for name, ms in rows.items():
        print(f"  {name:<36} {ms:8.3f} ms")


def graphed(fn):
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def llama_passes(n: int = 32768, n_piv: int = 4, density: float = 0.2) -> None:
    """One-pass vs two-pass map at Llama-3.1-8B shapes (32 / 8 heads, head dim 128)."""
    from sharedattn.kernels.block_sparse import block_sparse_attention

    q, k, v, _, pivotal, layout = _inputs(32, 8, 128, 128, n, n_piv, density, sink=False)
    print(f"Llama shape N={n} pivotal={n_piv} density={layout.density():.3f}")
    print(f"  no map {time_ms(lambda: block_sparse_attention(q, k, v, layout)):.3f} ms")
    for mode in ("one", "two"):
        ms = time_ms(lambda: block_sparse_attention(q, k, v, layout, return_block_mass=True, mass_heads=pivotal,
                                                    mass_pass=mode))
        print(f"  map {mode}-pass {ms:.3f} ms")


def model_run(model: str, lookup_path: str, n: int) -> None:
    from pathlib import Path

    from sharedattn.analysis.files.prompts import passkey_prompt
    from sharedattn.analysis.hf.models import load_model
    from sharedattn.analysis.hf.prefill_run import run_prefill
    from sharedattn.analysis.method import sharing as sharing_mod
    from sharedattn.analysis.method import sparse_prefill as sp_mod
    from sharedattn.analysis.method.method_config import MethodName, make_config
    from sharedattn.analysis.offline.lookup import load_lookup

    loaded = load_model(model)
    lookup = load_lookup(Path(lookup_path))
    ids = passkey_prompt(loaded.tokenizer, n, depth=0.3, seed=7).input_ids
    events: dict = defaultdict(list)  # (layer, piece) -> [(start, end)]
    state = {"layer": None}

    def timed(piece, fn):
        def wrapper(*a, **kw):
            if torch.cuda.is_current_stream_capturing():  # being recorded into a graph: no events
                return fn(*a, **kw)
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            out = fn(*a, **kw)
            e.record()
            events[(state["layer"], piece)].append((s, e))
            return out
        return wrapper

    orig_attend = sp_mod.SparsePrefill.attend

    def attend(obj, layer, *a):
        state["layer"] = layer
        return timed("layer", orig_attend)(obj, layer, *a)

    sp_mod.SparsePrefill.attend = attend
    for name in ("last_block_profiles", "probe_column_estimate", "pooled_block_estimate", "sparse_attention",
                 "block_mass"):
        setattr(kernels, name, timed(name, getattr(kernels, name)))
    sp_mod.SparsePrefill._run = timed("run (sync+kernel+record)", sp_mod.SparsePrefill._run)
    sharing_mod.SharingState.record_pivotals = timed("record_pivotals", sharing_mod.SharingState.record_pivotals)
    graph_run = sp_mod.DecisionGraphs.run

    def step(graphs, key, fn, inputs, **kw):  # SparsePrefill has two: the decision and the record step
        piece = "record step" if "block_mass" in inputs else "decision step"
        return timed(piece, graph_run)(graphs, key, fn, inputs, **kw)

    sp_mod.DecisionGraphs.run = step
    cfg = make_config("shareprefill", dense_below=0)
    for _ in range(4):
        events.clear()
        run = run_prefill(loaded, ids, MethodName.SHAREPREFILL, cfg, lookup)
    torch.cuda.synchronize()
    dec = run.trace.decision[-1, :, 0]  # [L, H] of the last chunk
    piv = (dec == 1).sum(-1).tolist()
    print(f"prefill {run.seconds * 1e3:.1f} ms; attention {run.attention_seconds * 1e3:.1f} ms")
    print("pivotal heads per layer:", piv, "shared per layer:", (dec == 2).sum(-1).tolist())
    per = defaultdict(dict)
    for (layer, piece), pairs in events.items():
        per[layer][piece] = statistics.median(a.elapsed_time(b) for a, b in pairs)
    kinds: dict = defaultdict(lambda: defaultdict(list))
    for layer in sorted(per, key=lambda x: -1 if x is None else x):
        print(layer, {k: round(v, 3) for k, v in per[layer].items()})
        if layer is not None:
            for piece, ms in per[layer].items():
                kinds["pivotal" if piv[layer] else "no pivotal"][piece].append(ms)
    for kind, pieces in kinds.items():
        print(kind, {p: round(statistics.mean(v), 3) for p, v in pieces.items()})


if __name__ == "__main__":
    if sys.argv[1] == "llama":
        llama_passes(*[int(a) for a in sys.argv[2:4]], *[float(a) for a in sys.argv[4:5]])
    elif sys.argv[1] == "synth":
        synth(*[int(a) for a in sys.argv[2:4]], *[float(a) for a in sys.argv[4:5]])
    else:
        model_run(sys.argv[2], sys.argv[3], int(sys.argv[4]))
