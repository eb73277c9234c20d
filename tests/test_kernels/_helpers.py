"""Helpers shared by the kernel tests: random inputs, random layouts, calibrated tolerances."""
from __future__ import annotations

from contextlib import contextmanager

import torch

from sharedattn.kernels.layout import BlockLayout
from sharedattn.kernels.reference import num_blocks


def make_qkv(b, h, hkv, nq, nk, d, dtype, device="cpu", seed=0):
    """Random q ``[b, h, nq, d]``, k/v ``[b, hkv, nk, d]`` (never zeros)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(b, h, nq, d, generator=g)
    k = torch.randn(b, hkv, nk, d, generator=g)
    v = torch.randn(b, hkv, nk, d, generator=g)
    return (x.to(device=device, dtype=dtype) for x in (q, k, v))


def random_layout(b, h, nq, nk, bs, density, device="cpu", seed=0, keep_diag=True):
    """Random block mask at roughly ``density``; keeps block 0 and the diagonal when asked."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    nqb, nkb = num_blocks(nq, bs), num_blocks(nk, bs)
    mask = torch.rand(b, h, nqb, nkb, generator=g) < density
    if keep_diag:
        r = torch.arange(nqb)
        diag = ((torch.clamp((r + 1) * bs, max=nq) - 1 + nk - nq) // bs)  # [nqb]
        mask[:, :, r, diag] = True
        mask[..., 0] = True
    return BlockLayout.from_dense(mask.to(device), bs, nq, nk)


def tolerance(out_lp: torch.Tensor, ref32: torch.Tensor, torch_lp: torch.Tensor, abs_tol=1e-5) -> float:
    """Flash-attention-style bound: 2x torch's own low-precision error plus a small absolute term."""
    return 2.0 * (torch_lp.float() - ref32).abs().max().item() + abs_tol


def poisoned(shape, dtype, device="cpu") -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


@contextmanager
def recorded_compiles(monkeypatch, mode: str):
    """The flash backend's compiled bodies in ``mode`` (dynamic or static) with a dynamo backend that
    records every graph it is handed and runs it eagerly: yields ``(graphs, backend)`` (pass
    ``backend`` to ``flash._compiled``); afterwards flash's compile cache and dynamo are cleared."""
    from sharedattn.kernels import flash

    graphs = []

    def recording(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(flash, "COMPILE", mode)
    torch._dynamo.reset()
    try:
        yield graphs, recording
    finally:
        flash._compiled.cache_clear()
        torch._dynamo.reset()
