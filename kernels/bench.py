"""GPU timing library behind ``sharedattn bench kernel`` (torch + triton only; GPU only).

Nothing here runs at import. Every timing is a median over CUDA-event-timed repeats after warm-up
(``time_ms``). FLOPs count causal token pairs of kept blocks exactly (``kept_pairs``): a kept
block contributes ``4 * D`` FLOPs per visible (query, key) pair (``QK^T`` and ``PV``), so dense
causal attention is ``~2 * H * N^2 * D``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from .layout import BlockLayout
from .limits import DEFAULT_BLOCK_SIZE
from .reference import causal_block_mask, num_blocks


@dataclass(frozen=True)
class BenchShape:
    """Llama-3.1-8B attention: 32 query heads, 8 KV heads, head dim 128, bf16, batch 1."""

    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    block_size: int = DEFAULT_BLOCK_SIZE
    batch: int = 1


@dataclass
class CaseResult:
    n: int
    pattern: str
    target_density: float
    density: float
    tflop: float  # kept-block FLOPs / 1e12
    ms: dict[str, float] = field(default_factory=dict)  # ours / flex
    tflops: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)


def time_ms(fn: Callable[[], object], min_total_ms: float = 300.0, max_reps: int = 50) -> float:
    """Median milliseconds of ``fn`` (CUDA events), after two warm-up calls."""
    fn()
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    reps = int(min(max_reps, max(3, math.ceil(min_total_ms / max(start.elapsed_time(end), 1e-3)))))
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(sorted(times)[len(times) // 2])


def matmul_tflops(device: torch.device, n: int = 8192) -> float:
    """Measured bf16 matrix rate (random data), TFLOP/s: the compute ceiling for the floor."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    return 2 * n ** 3 / time_ms(lambda: a @ b) / 1e9


def kept_pairs(layout: BlockLayout) -> float:
    """Number of causally visible (query, key) token pairs inside kept blocks, all heads summed."""
    bs, nq, nk = layout.block_size, layout.nq, layout.nk
    dev = layout.device
    r = torch.arange(num_blocks(nq, bs), device=dev, dtype=torch.float64)
    a0 = r * bs + (nk - nq) + 1  # visible keys of each block's first row
    rows = torch.clamp((r + 1) * bs, max=nq) - r * bs  # rows per query block
    edges = torch.clamp(torch.arange(num_blocks(nk, bs) + 1, device=dev) * bs, max=nk).double()
    t = torch.clamp(edges[None, :] - a0[:, None], min=0)
    t = torch.minimum(t, rows[:, None])
    s = t * a0[:, None] + t * (t - 1) / 2 + (rows[:, None] - t) * edges[None, :]  # [nqb, nkb+1]
    pairs = s[:, 1:] - s[:, :-1]  # [nqb, nkb]
    return float((layout.to_dense().double() * pairs).sum().item())


def random_mask(shape: BenchShape, n: int, density: float, gen: torch.Generator,
                device: torch.device) -> torch.Tensor:
    """Random causal block mask ``[B, H, nqb, nkb]`` near ``density``; diagonal and block 0 kept."""
    nb = num_blocks(n, shape.block_size)
    causal = causal_block_mask(n, n, shape.block_size, device)
    forced = torch.eye(nb, dtype=torch.bool, device=device)
    forced[:, 0] = True
    c_all, c_forced = causal.sum().item(), forced.sum().item()
    p = max(0.0, (density * c_all - c_forced) / max(c_all - c_forced, 1))
    rnd = torch.rand(shape.batch, shape.heads, nb, nb, generator=gen, device=device)
    return ((rnd < p) | forced) & causal


def random_shared_mask(shape: BenchShape, n: int, density: float, gen: torch.Generator,
                       device: torch.device) -> torch.Tensor:
    """Like ``random_mask`` but one mask for every head: K/V blocks are re-read by the heads of a
    KV group while they are still in L2 (isolates the memory-traffic cost of per-head masks)."""
    one = random_mask(BenchShape(shape.heads, shape.kv_heads, shape.head_dim, shape.block_size, 1),
                      n, density, gen, device)[:, :1]
    return one.expand(shape.batch, shape.heads, -1, -1).contiguous()


def copy_bandwidth_gbs(device: torch.device, nbytes: int = 4 << 30) -> float:
    """Device-to-device copy rate, GB/s counting bytes read plus bytes written."""
    a = torch.empty(nbytes // 2, dtype=torch.int16, device=device).random_()
    b = torch.empty_like(a)
    return 2 * nbytes / time_ms(lambda: b.copy_(a)) / 1e6


def vertical_slash_mask(shape: BenchShape, n: int, density: float, gen: torch.Generator,
                        device: torch.device) -> torch.Tensor:
    """Skewed vertical-slash block mask: per head, heavy-tailed column and diagonal scores; each
    row keeps its top ``ceil(density * causal blocks)`` by column + diagonal score, plus the
    diagonal and block 0. ``[B, H, nqb, nkb]``."""
    nb = num_blocks(n, shape.block_size)
    bh = (shape.batch, shape.heads)
    col = torch.rand(*bh, nb, generator=gen, device=device) ** 8  # few strong columns
    diag = torch.rand(*bh, nb, generator=gen, device=device) ** 8  # few strong diagonals
    r = torch.arange(nb, device=device)
    off = (r[:, None] - r[None, :]).clamp(min=0)  # [nqb, nkb] diagonal offset
    score = col[..., None, :] + diag[..., off]  # [B, H, nqb, nkb]
    causal = causal_block_mask(n, n, shape.block_size, device)
    score = score.masked_fill(~causal, -1.0)
    score[..., r, r] = 3.0
    score[..., 0] = 3.0
    keep_n = torch.ceil(density * causal.sum(-1).double()).long().clamp(min=1)  # [nqb]
    rank = score.argsort(dim=-1, descending=True).argsort(dim=-1)
    return (rank < keep_n[:, None]) & causal


def _flex_block_mask(layout: BlockLayout):
    """FlexAttention BlockMask with the same kept blocks (full blocks without mask_mod)."""
    from torch.nn.attention.flex_attention import BlockMask

    from .layout import _full_block_mask

    bs, nq, nk = layout.block_size, layout.nq, layout.nk
    keep = layout.to_dense()
    full = keep & _full_block_mask(nq, nk, bs, keep.device)
    part = keep & ~full

    def csr(m):
        cols = torch.arange(m.shape[-1], device=m.device, dtype=torch.int32)
        keyed = torch.where(m, cols, torch.full_like(cols, m.shape[-1]))
        idx = torch.sort(keyed, dim=-1).values
        return m.sum(-1, dtype=torch.int32), torch.where(idx == m.shape[-1], 0, idx).int()

    def causal(b, h, q_idx, kv_idx):
        return q_idx + (nk - nq) >= kv_idx

    pc, pi = csr(part)
    fc, fi = csr(full)
    return BlockMask.from_kv_blocks(pc, pi, fc, fi, BLOCK_SIZE=bs, mask_mod=causal, seq_lengths=(nq, nk))


class Baselines:
    """Dense SDPA (cuDNN, flash) and compiled FlexAttention on one set of inputs."""

    def __init__(self, q, k, v):
        self.q, self.k, self.v = q, k, v
        group = q.shape[1] // k.shape[1]
        self.k_rep = k.repeat_interleave(group, dim=1)  # [B, H, N, D] for the dense SDPA backends
        self.v_rep = v.repeat_interleave(group, dim=1)
        from torch.nn.attention.flex_attention import flex_attention

        self.flex = torch.compile(flex_attention, dynamic=False)

    def sdpa_ms(self, backend_name: str) -> float:
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[backend_name]

        def run():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(self.q, self.k_rep, self.v_rep, is_causal=True)
        return time_ms(run)

    def flex_ms(self, layout: BlockLayout) -> float:
        bm = _flex_block_mask(layout)
        return time_ms(lambda: self.flex(self.q, self.k, self.v, block_mask=bm, enable_gqa=True))


def make_inputs(shape: BenchShape, n: int, device: torch.device, seed: int = 0):
    """Random bf16 q ``[B, H, N, D]`` and k, v ``[B, H_kv, N, D]``."""
    g = torch.Generator(device=device).manual_seed(seed)
    mk = lambda h: torch.randn(shape.batch, h, n, shape.head_dim, device=device,  # noqa: E731
                               dtype=torch.bfloat16, generator=g)
    return mk(shape.heads), mk(shape.kv_heads), mk(shape.kv_heads)


def check_against_flex(q, k, v, layout: BlockLayout, ours: torch.Tensor, flex_fn) -> float:
    """Max abs difference between our output and FlexAttention's on the same mask."""
    want = flex_fn(q, k, v, block_mask=_flex_block_mask(layout), enable_gqa=True)
    return float((ours.float() - want.float()).abs().max().item())


def result_dict(r: CaseResult) -> dict:
    return asdict(r)


DEFAULT_CONFIGS = [  # AttnConfig fields (BLOCK_M, BLOCK_N, warps, stages, warp spec., TMA, order)
    (128, 128, 8, 3, False, False, "heads"), (128, 128, 8, 3, False, True, "heads"),
    (128, 128, 8, 3, False, False, "kv"), (128, 128, 8, 3, False, True, "kv"),
    (128, 128, 8, 2, False, True, "kv"), (128, 128, 8, 4, False, True, "kv"),
    (128, 64, 8, 3, False, True, "kv"), (128, 128, 8, 3, True, True, "kv"),
    (128, 128, 8, 2, True, True, "kv"),
]


def tune_configs(shape: BenchShape, n: int, device: torch.device, configs=DEFAULT_CONFIGS, log=print):
    """Time each config at length ``n`` on densities 1.0 and 0.1 (random); best first."""
    from .block_sparse import AttnConfig, block_sparse_attention

    q, k, v = make_inputs(shape, n, device)
    gen = torch.Generator(device=device).manual_seed(1)
    layouts = [BlockLayout.from_dense(random_mask(shape, n, d, gen, device), shape.block_size)
               for d in (1.0, 0.1)]
    rows = []
    for c in configs:
        cfg = AttnConfig(*c)
        if shape.block_size % cfg.block_m or shape.block_size % cfg.block_n:
            continue
        try:
            ms = [time_ms(lambda: block_sparse_attention(q, k, v, lay, config=cfg)) for lay in layouts]
        except Exception as exc:  # a config the compiler rejects (e.g. shared memory) is skipped
            log(f"config {c} failed: {type(exc).__name__}: {str(exc)[:120]}")
            continue
        rows.append({"config": list(c), "ms_density_1": ms[0], "ms_density_0.1": ms[1]})
        log(f"tune n={n} {c}: {ms[0]:.2f} ms (d=1.0), {ms[1]:.2f} ms (d=0.1)")
    return sorted(rows, key=lambda r: r["ms_density_1"] + 5 * r["ms_density_0.1"])


def backend_ms(name: str, q, k, v, layout: BlockLayout, **timing) -> float:
    """Median ms of ``sparse_attention`` with backend ``name`` asked for (flash, auto, triton);
    ``timing``: ``time_ms``'s options."""
    from .backend import sparse_attention, use_backend

    share = layout.density()  # on the host, as the synced prefill path gives it to auto's rule

    def run():
        with use_backend(name):
            return sparse_attention(q, k, v, layout, kept_share=share)
    return time_ms(run, **timing)


def run_length(shape: BenchShape, n: int, densities, patterns, device, config, peak_tflops,
               log=print, backends: tuple[str, ...] = ()) -> tuple[dict, list[CaseResult]]:
    """Dense baselines at length ``n``, then ours (Triton), FlexAttention and the other attention
    ``backends`` (flash, auto: ``kernels/backend.py``) per (pattern, density)."""
    from .block_sparse import block_sparse_attention

    q, k, v = make_inputs(shape, n, device)
    base = Baselines(q, k, v)
    dense_tflop = 2 * shape.batch * shape.heads * n * n * shape.head_dim / 1e12
    dense = {name: base.sdpa_ms(name) for name in ("cudnn", "flash")}
    log(f"n={n}: cudnn {dense['cudnn']:.2f} ms, flash {dense['flash']:.2f} ms")
    out = torch.empty_like(q)
    gen = torch.Generator(device=device).manual_seed(n)
    makers = {"random": random_mask, "vertical_slash": vertical_slash_mask,
              "random_shared": random_shared_mask}
    cases = []
    for pattern in patterns:
        for d in densities:
            lay = BlockLayout.from_dense(makers[pattern](shape, n, d, gen, device), shape.block_size)
            flop = 4 * shape.head_dim * kept_pairs(lay) / 1e12
            res = CaseResult(n, pattern, d, lay.density(), flop)
            res.ms["ours"] = time_ms(lambda: block_sparse_attention(q, k, v, lay, out=out, config=config))  # noqa: F821 - ruff misreads the later del
            res.ms["flex"] = base.flex_ms(lay)
            for name in backends:
                res.ms[name] = backend_ms(name, q, k, v, lay)
            res.ms["floor"] = flop / peak_tflops * 1e3
            for name, ms in res.ms.items():
                res.tflops[name] = flop / ms * 1e3
            for name, ms in dense.items():  # throughput on kept blocks vs the dense backend's
                res.ratios[f"vs_{name}"] = res.tflops["ours"] / (dense_tflop / ms * 1e3)
            res.ratios["speedup_vs_flex"] = res.ms["flex"] / res.ms["ours"]
            if "flash" in res.ms:  # flash-attn-4: its throughput on kept blocks vs cuDNN's dense one
                res.ratios["flash_vs_cudnn"] = res.tflops["flash"] / (dense_tflop / dense["cudnn"] * 1e3)
                res.ratios["flash_speedup_vs_ours"] = res.ms["ours"] / res.ms["flash"]
            if "auto" in res.ms:
                res.ratios["auto_over_best"] = res.ms["auto"] / min(res.ms["ours"], res.ms.get("flash", res.ms["ours"]))
            res.ratios["floor_over_ours"] = res.ms["floor"] / res.ms["ours"]
            if d == 0.1 and pattern == "random":
                res.ratios["max_abs_diff_vs_flex"] = check_against_flex(q, k, v, lay, out, base.flex)
            log(f"  {pattern:14s} d={d:<5} (actual {res.density:.3f}): ours {res.ms['ours']:.2f} ms "
                f"{res.tflops['ours']:.0f} TF/s, flex {res.ms['flex']:.2f} ms, "
                f"x{res.ratios['vs_cudnn']:.2f} cuDNN, x{res.ratios['speedup_vs_flex']:.2f} flex")
            cases.append(res)
    info = {"n": n, "dense_tflop": dense_tflop,
            **{f"{k}_ms": v for k, v in dense.items()},
            **{f"{k}_tflops": dense_tflop / v * 1e3 for k, v in dense.items()}}
    del base, q, k, v, out
    torch.cuda.empty_cache()
    return info, cases
