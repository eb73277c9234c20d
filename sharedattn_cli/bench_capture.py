"""`sharedattn bench capture`: streamed capture against eager output_attentions, side by side."""
from __future__ import annotations

import platform
import shlex
import sys
from typing import Annotated, Optional

import typer

from .common import cli_command, console
from .options import DeviceOpt, DtypeOpt, JsonOpt, TokenListOpt


def _machine(device: str) -> str:
    import os

    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"


@cli_command
def bench_capture(
    tokens: TokenListOpt = [2048],
    repeats: Annotated[int, typer.Option("--repeats", help="Timed runs per variant (median reported).")] = 1,
    skip_eager_above: Annotated[int, typer.Option(help="Skip the eager baseline above this length.")] = 8192,
    timeout: Annotated[Optional[float], typer.Option(help="Seconds allowed per variant.")] = None,
    random_init: Annotated[Optional[str], typer.Option(
        help="Time a random-init model of this shape (e.g. smollm2-shape) instead of the bundled weights.")] = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Time and peak memory of `capture` vs an eager forward with output_attentions=True and a plain
    SDPA forward, on the bundled SmolLM2, each variant in its own process."""
    import json

    import torch

    from sharedattn.analysis.hf.capture_bench import CaptureMode, run_variant

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    command = "sharedattn " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    model = f"random-init {random_init}" if random_init else "bundled SmolLM2-135M"
    console.print(f"command: {command}\nmachine: {_machine(device)}, dtype {dtype}, model {model}")
    rows = []
    for n in tokens:
        for mode in CaptureMode:
            if mode is CaptureMode.EAGER_ATTENTIONS and n > skip_eager_above:
                continue
            t = run_variant(mode, n, device, dtype, repeats, timeout, random_init)
            rows.append(t)
            mem = f"{t.peak_rss_gib:.2f} GiB RSS" + (f", {t.peak_device_gib:.2f} GiB GPU" if t.peak_device_gib else "")
            status = t.error or f"median {t.median:.3f} s over {len(t.seconds)}"
            console.print(f"{n:>7} tokens  {t.mode:<26} {status:<28} peak {mem}")
    doc = {"command": command, "machine": _machine(device), "dtype": dtype, "model": model,
           "results": [{**vars(r), "median_s": r.median} for r in rows]}
    if json_out:
        print(json.dumps(doc))


def register_into(bench_app: typer.Typer) -> None:
    bench_app.command("capture")(bench_capture)
