"""Launch on the tensors' own GPU: Triton (and inductor) kernels launch on the *current* CUDA device.

A model sharded over several GPUs (``device_map="auto"``) runs layer 20 on ``cuda:1`` while the
current device is still ``cuda:0``; a launch there would run on the wrong GPU with the other GPU's
pointers. Every launcher in this package is therefore decorated with ``on_input_device``: the call
runs with its first tensor argument's GPU current (nothing changes for CPU tensors, or when that GPU
is already current, so one device gives the same launches and results as before).
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable)


def on_device(where: torch.Tensor | torch.device):
    """A context in which the GPU of ``where`` (a tensor or a device) is the current CUDA device;
    a no-op context for the CPU."""
    device = where.device if isinstance(where, torch.Tensor) else torch.device(where)
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def on_input_device(fn: F) -> F:
    """Run ``fn(x, ...)`` with ``x``'s GPU current (``x``: its first argument, a tensor)."""

    @functools.wraps(fn)
    def launcher(x: torch.Tensor, *args, **kwargs):
        with on_device(x):
            return fn(x, *args, **kwargs)

    return launcher  # type: ignore[return-value]
