"""`sharedattn compare [MODEL] [PROMPT...] [--methods ...] [--lookup L]`: every method, same prompts."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from sharedattn.analysis.method.method_config import MethodName
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
    current_world,
    err_console,
    gpu_or_cpu_note,
    split_inputs,
)
from .compare_inputs import method_configs
from .compare_report import print_tables, write_outputs
from .lookup_source import lookup_for
from .options import (
    BlockSizeOpt,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    ExactTailOpt,
    FallbackOpt,
    GammaOpt,
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
    SuiteTokensOpt,
    TauFbOpt,
    TauQaOpt,
    TauSOpt,
    TruncateOpt,
)
from .ranks import over_ranks

Opt = typer.Option
ALL_METHODS = "dense,a-shape,vertical-slash,flexprefill,shareprefill"


def _parse_list(text: Optional[str], kind, option: str) -> Optional[tuple]:
    if text is None:
        return None
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{option} {text!r}: expected comma-separated numbers") from None
    if not values:
        raise UserError(f"{option} is empty")
    return values


def _compare_config(methods: str, eval_positions: int, max_new_tokens: int, no_recall: bool,
                    timing_pass: bool):
    from sharedattn.analysis.evaluation.compare import CompareConfig, parse_methods

    return CompareConfig(parse_methods(methods), eval_positions, max_new_tokens, not no_recall, timing_pass)


@cli_command
@over_ranks
def compare(
    inputs: InputsArg = None,
    methods: Annotated[str, Opt("--methods", help="Comma-separated methods; dense always runs as the "
                                "reference.")] = ALL_METHODS,
    lookup: LookupOpt = None,
    quick: Annotated[bool, Opt("--quick", help="Reduced grid: 2 bundled prompts and passkeys at 1024 tokens, "
                               "depths 0/0.5/1; min_budget 256 unless given (the paper's 1024 keeps every "
                               "block at 1K).")] = False,
    passkey: Annotated[bool, Opt("--passkey", help="Add the passkey grid (1K-8K up to the context x "
                                 "depths 0-1).")] = False,
    passkey_lengths: Annotated[Optional[str], Opt("--passkey-lengths", help="Passkey grid lengths, "
                                                  "e.g. 1024,2048.")] = None,
    passkey_depths: Annotated[Optional[str], Opt("--passkey-depths", help="Passkey grid depths, e.g. 0,0.5,1.")] = None,
    needles: Annotated[int, Opt("--needles", help="Add a multi-key variant per length with this many keys "
                                "(0: off).")] = 0,
    ruler: Annotated[int, Opt("--ruler", help="Add the RULER-style tasks (multi-value and multi-query needles, "
                              "variable tracking, frequent words, document QA) at each grid length, this many "
                              "seeds each (0: off).")] = 0,
    seed: Annotated[int, Opt("--seed", help="Base seed of the generated prompts.")] = 0,
    no_text: Annotated[bool, Opt("--no-text", help="Skip the default bundled real-text prompts.")] = False,
    tokens: SuiteTokensOpt = None,
    eval_positions: Annotated[int, Opt("--eval-positions", help="Last positions scored for KL, top-1, "
                                       "log-likelihood.")] = 256,
    max_new_tokens: Annotated[int, Opt("--max-new-tokens", help="Greedy tokens generated for prompts with "
                                       "an answer.")] = 10,
    no_recall: Annotated[bool, Opt("--no-recall", help="Skip measuring attention recall (saves one pass "
                                   "a layer).")] = False,
    timing_pass: Annotated[bool, Opt("--timing-pass", help="Time a separate uninstrumented prefill per run.")] = False,
    block_size: BlockSizeOpt = None,
    dense_below: Annotated[int, Opt("--dense-below", help="Prompts shorter than this run dense (tokens); "
                                    "0 here, so short prompts measure the sparse methods.")] = 0,
    gamma: GammaOpt = None,
    gammas: Annotated[Optional[str], Opt("--gammas", help="Run the whole comparison at each of these gammas "
                                         "(e.g. 0.9,0.95,0.97; one folder each under --out; dense and a-shape run "
                                         "once) and compare the methods at equal density, as "
                                         "`sharedattn matched`.")] = None,
    min_budget: MinBudgetOpt = None,
    tau_qa: TauQaOpt = None,
    tau_s: TauSOpt = None,
    tau_fb: TauFbOpt = None,
    own_last_row: OwnLastRowOpt = None,
    fallback: FallbackOpt = None,
    exact_tail: ExactTailOpt = None,
    sink_tokens: SinkOpt = None,
    local_tokens: LocalOpt = None,
    csv_path: Annotated[Optional[Path], Opt("--csv", help="Also write the rows as CSV here (always in --out).")] = None,
    no_figures: Annotated[bool, Opt("--no-figures", help="Skip the figures.")] = False,
    kernel: KernelOpt = KernelChoice.AUTO,
    out: OutDirOpt = DEFAULT_OUT / "compare",
    truncate: TruncateOpt = False,
    model: ModelOpt = None,
    random_init: RandomInitOpt = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Run every method on the same prompts in one process and report fidelity against dense.

    Per method: density, attention recall, relative error of attention outputs (mean and worst
    layer), KL and top-1 agreement of the last positions' logits, log-likelihood difference on real
    text, passkey exact match, time. Every generated prompt is saved in --out; one row of a grid
    runs again by the name its results give it, with --tokens its length (`passkey:depth=0.5,seed=7`,
    `multikey:needles=4,seed=11`, `ruler-mq:seed=2`; the RULER-style kinds are ruler-mv, ruler-mq,
    ruler-vt, ruler-fwe, ruler-qa).

    Examples: `sharedattn compare --quick`,
    `sharedattn compare stdlib-prose licenses --tokens 4096 --passkey --needles 4`,
    `sharedattn compare ./my-model notes.txt --methods dense,flexprefill,shareprefill --lookup lookup.json`.
    Several GPUs: `torchrun --nproc-per-node 2 -m sharedattn_cli compare ...` splits the prompts over
    the GPUs and writes what one process writes.
    """
    from sharedattn.analysis.evaluation.prompt_suite import QUICK_MIN_BUDGET, PromptPlan, build_tasks

    cfg = _compare_config(methods, eval_positions, max_new_tokens, no_recall, timing_pass)
    gamma_list = _gamma_list(gammas, gamma, csv_path)
    if quick and min_budget is None:
        min_budget = QUICK_MIN_BUDGET
    model_spec, specs = split_inputs(inputs, model)
    plan = PromptPlan.from_options(specs, quick=quick, passkey=passkey,
                                   lengths=_parse_list(passkey_lengths, int, "--passkey-lengths"),
                                   depths=_parse_list(passkey_depths, float, "--passkey-depths"),
                                   needles=needles, seed=seed, no_text=no_text, tokens=tokens, truncate=truncate,
                                   default_tokens=DEFAULT_TOKENS, ruler=ruler)
    check_out_dir(out)
    if csv_path is not None:
        check_out_dir(csv_path.parent)
    check_kernel(kernel, device)
    choice = ModelChoice(model_spec, random_init, dtype, device, device_map, max_memory)
    loaded = choice.load()
    runs = [(g, method_configs(cfg, loaded, block_size=block_size, dense_below=dense_below, gamma=g,
                               min_budget=min_budget, tau_qa=tau_qa, tau_s=tau_s, tau_fb=tau_fb,
                               own_last_row=own_last_row, fallback=fallback, exact_tail=exact_tail,
                               sink_tokens=sink_tokens, local_tokens=local_tokens, kernel=kernel))
            for g in (gamma_list or (gamma,))]
    world = current_world()
    # a lookup built on the way is built once, by rank 0 (it captures the bundled prompts)
    lookup_obj, lookup_note = world.share(
        lookup_for(MethodName.SHAREPREFILL in cfg.methods, lookup, loaded, choice) if world.is_main else None)
    tasks, skipped = build_tasks(plan, loaded,
                                 warn=lambda msg: err_console.print(f"[yellow]warning:[/] {msg}"))
    if gamma_list is None:
        _run_and_report(loaded, tasks, skipped, runs[0][1], lookup_obj, lookup_note, cfg, plan,
                        out=out, csv_path=csv_path, figures=not no_figures, json_out=json_out, world=world)
        return
    from .compare_sweep import run_sweep

    reuse: dict = {}  # dense (and any method whose config does not change with gamma) runs once a prompt
    run_sweep(runs, cfg, out=out, figures=not no_figures, json_out=json_out,
              run_one=lambda configs, sub: _run_and_report(loaded, tasks, skipped, configs, lookup_obj, lookup_note,
                                                           cfg, plan, out=sub, csv_path=None,
                                                           figures=not no_figures, json_out=False,
                                                           show=not json_out, reuse=reuse, world=world))


def _gamma_list(gammas: Optional[str], gamma: Optional[float], csv_path: Optional[Path]) -> Optional[tuple]:
    values = _parse_list(gammas, float, "--gammas")
    if values is None:
        return None
    if gamma is not None:
        raise UserError("give --gamma or --gammas, not both")
    if csv_path is not None:
        raise UserError("--csv does not go with --gammas: each gamma's run writes results.csv in its own folder")
    if len(set(values)) != len(values):
        raise UserError(f"--gammas {gammas!r} lists a value twice")
    return values


def _run_and_report(loaded, tasks, skipped, configs, lookup_obj, lookup_note, cfg, plan, *, out: Path,
                    csv_path: Optional[Path], figures: bool, json_out: bool, show: bool = True,
                    reuse: Optional[dict] = None, world=None) -> Optional[dict]:
    """Run, write the outputs in ``out``, print them (tables, or one JSON line); returns the document.

    Nothing is written until every run has finished (under torchrun: on every rank), and then only
    by rank 0; the other ranks return None."""
    from sharedattn.analysis.evaluation.compare import run_compare
    from sharedattn.analysis.evaluation.tasks import save_task_prompts

    on_gpu = gpu_or_cpu_note(loaded)
    runs = len(tasks) * len(cfg.run_order)  # at most: runs taken from ``reuse`` are not repeated
    if err_console.is_terminal:
        with err_console.status(f"{runs} prefills...") as status:
            result = run_compare(loaded, tasks, configs, lookup_obj, cfg, progress=status.update, reuse=reuse,
                                 world=world)
    else:  # a log file: one line per run, so a long run shows where it is
        result = run_compare(loaded, tasks, configs, lookup_obj, cfg, reuse=reuse, world=world,
                             progress=lambda msg: err_console.print(f"[dim]{msg}[/]"))
    if result is None:  # not rank 0: it writes and prints
        return None
    result.skipped = skipped
    try:
        prompts_path = save_task_prompts(out / "prompts.json", tasks,
                                         {"model": loaded.fingerprint.to_json(), "plan": plan.to_json()})
    except OSError as exc:
        raise UserError(f"cannot write to {str(out)!r} ({exc.strerror or exc})") from None
    meta = {"command": "sharedattn " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
            "model": loaded.fingerprint.to_json(), "model_source": loaded.source,
            "device": "cuda" if on_gpu else "cpu", "lookup": lookup_note, "prompts_file": str(prompts_path)}
    doc = write_outputs(out, result, meta, csv_path=csv_path, figures=figures)
    if json_out:
        typer.echo(json.dumps(doc))
    elif show:
        print_tables(console, doc, result)
    return doc


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)
