"""`sharedattn prefill [MODEL] [PROMPT] [--method M] [--lookup L] [--bench]`: sparse prefill vs dense."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from sharedattn.analysis.method.method_config import MethodName, dense_below_defaults
from sharedattn.kernels.limits import KernelChoice

from .common import (
    DEFAULT_OUT,
    DEFAULT_TOKENS,
    ModelChoice,
    UserError,
    check_kernel,
    check_out_dir,
    cli_command,
    console,
    err_console,
    gpu_or_cpu_note,
    load_prompts,
    split_inputs,
)
from .lookup_source import lookup_for
from .options import (
    BlockSizeOpt,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    ExactTailOpt,
    FallbackOpt,
    GammaOpt,
    GraphsOpt,
    InputsArg,
    JsonOpt,
    KernelOpt,
    LocalOpt,
    LookupOpt,
    MaxMemoryOpt,
    MinBudgetOpt,
    ModelOpt,
    OutDirOpt,
    OwnLastRowOpt,
    RandomInitOpt,
    SinkOpt,
    TauFbOpt,
    TauQaOpt,
    TauSOpt,
    TokensOpt,
    TruncateOpt,
    default_block_size,
)
from .prefill_report import print_report

Opt = typer.Option


def method_config(method: MethodName, **fields):
    from sharedattn.analysis.method.method_config import make_config

    return make_config(method, **fields)


@cli_command
def prefill(
    inputs: InputsArg = None,
    method: Annotated[MethodName, Opt("--method", help="Sparse method to run against "
                                      "dense.")] = MethodName.SHAREPREFILL,
    lookup: LookupOpt = None,
    bench: Annotated[bool, Opt("--bench", help="Warm up, repeat, report medians and spreads, JSON line "
                               "last.")] = False,
    repeats: Annotated[Optional[int], Opt("--repeats", help="Timed runs with --bench (default 5 GPU, "
                                          "3 CPU).")] = None,
    warmup: Annotated[int, Opt("--warmup", help="Untimed runs before timing with --bench.")] = 1,
    max_new_tokens: Annotated[int, Opt("--max-new-tokens", help="Greedy tokens generated after prefill "
                                       "(dense decoding).")] = 16,
    chunk: Annotated[Optional[int], Opt("--chunk", help="Prefill in chunks of this many tokens over the "
                                        "cache.")] = None,
    block_size: BlockSizeOpt = None,
    dense_below: Annotated[Optional[int], Opt("--dense-below", help="Prompts shorter than this run dense "
                                              f"(tokens; default per method, {dense_below_defaults()}: from "
                                              "there each measured faster than dense on an H200 on planted "
                                              "Llama-3.1-8B shapes and the real Qwen2.5-Coder-0.5B; pass 0 to "
                                              "study the sparse path on short prompts).")] = None,
    gamma: GammaOpt = None,
    min_budget: MinBudgetOpt = None,
    tau_qa: TauQaOpt = None,
    tau_s: TauSOpt = None,
    tau_fb: TauFbOpt = None,
    own_last_row: OwnLastRowOpt = None,
    fallback: FallbackOpt = None,
    exact_tail: ExactTailOpt = None,
    sink_tokens: SinkOpt = None,
    local_tokens: LocalOpt = None,
    vertical_tokens: Annotated[Optional[int], Opt("--vertical-tokens", help="Fixed vertical budget "
                                                  "(vertical-slash).")] = None,
    slash_tokens: Annotated[Optional[int], Opt("--slash-tokens", help="Fixed slash budget (vertical-slash).")] = None,
    no_layer_errors: Annotated[bool, Opt("--no-layer-errors", help="Skip the extra pass that measures each "
                                         "layer's error.")] = False,
    graphs: GraphsOpt = True,
    kernel: KernelOpt = KernelChoice.AUTO,
    out: OutDirOpt = DEFAULT_OUT / "prefill",
    tokens: TokensOpt = DEFAULT_TOKENS,
    truncate: TruncateOpt = False,
    model: ModelOpt = None,
    random_init: RandomInitOpt = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Prefill a prompt with a sparse method and report it against dense in the same run.

    Examples: `sharedattn prefill --bench` (bundled model and prompt, shareprefill),
    `sharedattn prefill passkey:depth=0.3 --tokens 8192 --method flexprefill`,
    `sharedattn prefill ./my-model notes.txt --lookup lookup.json --chunk 8192`,
    `sharedattn prefill --kernel flash ...` (the report says which kernel each layer ran).
    """
    from sharedattn.analysis.evaluation.prefill_bench import machine_name, prefill_against_dense, report_document

    model_spec, prompts = split_inputs(inputs, model)
    if len(prompts) > 1:
        raise UserError(f"prefill takes one prompt, got {len(prompts)}: {' '.join(prompts)}")
    if chunk is not None and chunk < 1:
        raise UserError(f"--chunk must be positive, got {chunk}")
    check_out_dir(out)
    check_kernel(kernel, device)
    choice = ModelChoice(model_spec, random_init, dtype, device, device_map, max_memory)
    loaded = choice.load()
    config = method_config(method, block_size=default_block_size(loaded, block_size), kernel=kernel,
                           dense_below=dense_below, gamma=gamma, min_budget=min_budget, tau_qa=tau_qa,
                           tau_s=tau_s, tau_fb=tau_fb, own_last_row=own_last_row, fallback=fallback,
                           exact_tail=exact_tail, sink_tokens=sink_tokens, local_tokens=local_tokens,
                           vertical_tokens=vertical_tokens, slash_tokens=slash_tokens)
    prompt = load_prompts(loaded, prompts, tokens, truncate)[0]
    lookup_obj, lookup_note = lookup_for(method is MethodName.SHAREPREFILL, lookup, loaded, choice)
    if method is not MethodName.DENSE and prompt.num_tokens < config.dense_below:
        err_console.print(f"[yellow]note:[/] the prompt ({prompt.num_tokens} tokens) is shorter than "
                          f"--dense-below {config.dense_below} (the measured crossover), so every head "
                          "runs dense; pass --dense-below 0 to run the sparse path anyway")
    on_gpu = gpu_or_cpu_note(loaded)
    n_rep = (repeats or (5 if on_gpu else 3)) if bench else 1
    n_warm = warmup if bench else 0
    import torch

    try:
        with err_console.status(f"prefill {prompt.num_tokens} tokens: dense and {method.value}..."):
            result = prefill_against_dense(loaded, prompt.input_ids, method, config, lookup_obj, repeats=n_rep,
                                           warmup=n_warm, chunk=chunk, max_new_tokens=max_new_tokens,
                                           use_graphs=graphs, layer_errors=not no_layer_errors)
    except torch.OutOfMemoryError:
        raise UserError(f"out of GPU memory prefilling {prompt.num_tokens} tokens with {method.value}: "
                        "try --chunk 8192, fewer --tokens, or --device cpu") from None
    doc = report_document(result, command="sharedattn " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                          machine=machine_name(loaded), loaded=loaded, prompt=prompt, config=config,
                          lookup_note=lookup_note, bench=bench)
    _write_outputs(out, doc, result.ours.trace, method, loaded, prompt)
    if json_out:
        typer.echo(json.dumps(doc))
        return
    print_report(console, doc)
    if bench:
        typer.echo(json.dumps(doc["summary"]))


def _write_outputs(out: Path, doc: dict, trace, method: MethodName, loaded, prompt) -> None:
    from sharedattn.analysis.files.atomic import write_text_atomic
    from sharedattn.analysis.plots.trace_plot import trace_figure

    try:
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"prefill-{method.value}.json"
        write_text_atomic(path, json.dumps({**doc, "trace": trace.to_json()}, indent=1) + "\n")
        title = f"{loaded.fingerprint.model_id} - {method.value} - {prompt.name} ({prompt.num_tokens} tokens)"
        figure = trace_figure(trace, title, out / f"prefill-{method.value}-trace.png")
    except OSError as exc:
        raise UserError(f"cannot write to {str(out)!r} ({exc.strerror or exc})") from None
    doc["outputs"] = {"trace_json": str(path), "trace_figure": str(figure)}


def register(app: typer.Typer) -> None:
    app.command("prefill")(prefill)
