"""`sharedattn capture [MODEL] PROMPT... -o DIR`: write one attention record per prompt."""
from __future__ import annotations

from typing import Annotated

import typer

from sharedattn.kernels.limits import DEFAULT_CHUNK_SIZE

from .capturing import CaptureRequest, capture_records
from .common import (
    DEFAULT_OUT,
    DEFAULT_TOKENS,
    ModelChoice,
    check_out_dir,
    cli_command,
    console,
    current_world,
    split_inputs,
)
from .options import (
    BlockSizeOpt,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    InputsArg,
    MaxMemoryOpt,
    ModelOpt,
    OutDirOpt,
    RandomInitOpt,
    TokensOpt,
    TruncateOpt,
)
from .ranks import over_ranks


@cli_command
@over_ranks
def capture(
    inputs: InputsArg = None,
    model: ModelOpt = None,
    random_init: RandomInitOpt = None,
    out: OutDirOpt = DEFAULT_OUT / "records",
    tokens: TokensOpt = DEFAULT_TOKENS,
    truncate: TruncateOpt = False,
    block_size: BlockSizeOpt = None,
    chunk_size: Annotated[int, typer.Option("--chunk-size", help="Query rows reduced at once (memory bound).")
                          ] = DEFAULT_CHUNK_SIZE,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
) -> None:
    """Capture block-mass maps and probe profiles of every layer and head.

    Examples: `sharedattn capture` (bundled model and prompt), `sharedattn capture stdlib-code
    passkey:depth=0.5 --tokens 4096`, `sharedattn capture ./my-model notes.txt -o recs`.
    Several GPUs: `torchrun --nproc-per-node 2 -m sharedattn_cli capture ...` splits the prompts.
    """
    model_spec, prompts = split_inputs(inputs, model)
    check_out_dir(out)
    choice = ModelChoice(model_spec, random_init, dtype, device, device_map, max_memory)
    req = CaptureRequest(choice, tuple(prompts), tokens, truncate, block_size, chunk_size, use_cache=False)
    results, _ = capture_records(req, out_dir=out, world=current_world())
    for record, path in results:
        m = record.meta
        console.print(f"{m.prompt.name}: {m.num_tokens} tokens, {m.model.num_layers} layers x "
                      f"{m.model.num_heads} heads, block {m.block_size} -> {path}")


def register(app: typer.Typer) -> None:
    app.command("capture")(capture)
