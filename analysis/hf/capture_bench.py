"""Capture cost against what a user does today (eager attention with output_attentions=True).

Each variant runs in its own child process so its peak memory is its own: the child reports its
peak resident memory (``getrusage``) and, on CUDA, the peak allocated device memory. Run as
``python -m sharedattn.analysis.hf.capture_bench MODE TOKENS DEVICE DTYPE``.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from enum import Enum


class CaptureMode(str, Enum):
    CAPTURE = "capture"  # our streamed capture (normal SDPA output + chunked block maps)
    EAGER_ATTENTIONS = "eager-output-attentions"  # eager forward materialising every N x N map
    SDPA_FORWARD = "sdpa-forward"  # the plain forward pass, no capture: the floor


@dataclass(frozen=True)
class CaptureTiming:
    mode: str
    tokens: int
    seconds: list[float]
    peak_rss_gib: float
    peak_device_gib: float | None
    error: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")


def _child(mode: CaptureMode, tokens: int, device: str, dtype: str, repeats: int,
           random_init: str | None = None) -> dict:
    import torch

    from ..files.prompts import resolve_prompt
    from .capture import CaptureConfig, attention_implementation, capture_prompt
    from .models import load_model

    loaded = load_model(None, random_init=random_init, device=device, dtype=dtype)
    prompt = resolve_prompt("stdlib-prose", loaded.tokenizer, tokens=tokens, max_tokens=tokens)
    ids = torch.tensor([prompt.input_ids], device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def once():
        if mode is CaptureMode.CAPTURE:
            capture_prompt(loaded, prompt, CaptureConfig())
            return
        impl = "eager" if mode is CaptureMode.EAGER_ATTENTIONS else "sdpa"
        with attention_implementation(loaded.model, impl), torch.no_grad():
            out = loaded.model(input_ids=ids, use_cache=False,
                               output_attentions=mode is CaptureMode.EAGER_ATTENTIONS)
            del out

    seconds = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        once()
        sync()
        seconds.append(time.perf_counter() - start)
    import resource

    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return {"seconds": seconds, "peak_device_gib": peak, "peak_rss_gib": rss}


def run_variant(mode: CaptureMode, tokens: int, device: str, dtype: str, repeats: int,
                timeout: float | None = None, random_init: str | None = None) -> CaptureTiming:
    """Run one variant in a child process and read its peak memory (``random_init``: a random-init
    shape instead of the bundled weights; timing does not depend on the weights)."""
    cmd = [sys.executable, "-m", __name__, mode.value, str(tokens), device, dtype, str(repeats)]
    cmd += [random_init] if random_init else []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return CaptureTiming(mode.value, tokens, [], 0.0, None, f"timed out after {timeout:.0f} s")
    if proc.returncode != 0:
        last = (stderr.strip().splitlines() or ["killed"])[-1]
        if proc.returncode < 0:
            last = f"killed by signal {-proc.returncode} (out of memory?)"
        return CaptureTiming(mode.value, tokens, [], float("nan"), None, last[:200])
    data = json.loads(stdout.strip().splitlines()[-1])
    return CaptureTiming(mode.value, tokens, data["seconds"], data["peak_rss_gib"], data["peak_device_gib"])


def main(argv: list[str]) -> None:
    mode, tokens, device, dtype, repeats, *random_init = argv
    result = _child(CaptureMode(mode), int(tokens), device, dtype, int(repeats), *random_init)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
