"""The option aliases more than one command takes, each defined once.

One meaning per short flag across every command (a test walks the app and checks it):
`-m` --model, `-n` --tokens, `-b` --block-size, `-o` --out (the output path: a folder, or a file where
the command writes one file), `-r` --records, `-l` --layer. `--lookup` has no short flag (it was `-l`
in `prefill` and `compare` while `-l` was `--layer` in `heatmap`).

The sparse methods' parameters (`--gamma`, `--tau-s`, ..., shared by `prefill` and `compare`) map
one-to-one onto fields of the method configs (analysis/method/method_config.py); None means "the
config's default", and every default quoted in a help is read from the config classes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sharedattn.analysis.evaluation.suite_defaults import QUICK_TOKENS
from sharedattn.analysis.files.distributed import DeviceMap
from sharedattn.analysis.method import method_config as _mc
from sharedattn.analysis.method.method_config import AShapeConfig, FallbackRule, SharePrefillConfig
from sharedattn.analysis.offline.choices import JsCombine, Metric
from sharedattn.kernels.limits import DTYPES, KernelChoice, one_of

from .common import DEFAULT_TOKENS

Opt = typer.Option

# ---- model and prompts -----------------------------------------------------------------------

ModelOpt = Annotated[Optional[str], Opt(
    "--model", "-m", help="Model: a named model ('smollm2-135m', bundled, the default; others: "
    "`sharedattn models list`), a local Hugging Face folder, or a hub id.")]
RandomInitOpt = Annotated[Optional[str], Opt(
    "--random-init", help="Randomly initialised model of a named shape (llama-tiny, smollm2-shape, "
    "llama-3.1-8b-shape[:LAYERS]); its attention is not realistic.")]
TokensOpt = Annotated[int, Opt(
    "--tokens", "-n", help="Length of bundled prompts, in tokens.")]
SuiteTokensOpt = Annotated[Optional[int], Opt(
    "--tokens", "-n", help=f"Length of bundled prompts (default {DEFAULT_TOKENS}; {QUICK_TOKENS} with --quick).")]
TokenListOpt = Annotated[list[int], Opt("--tokens", "-n", help="Prompt lengths (repeat the option).")]
TruncateOpt = Annotated[bool, Opt(
    "--truncate", help="Cut prompt files longer than the model's context instead of failing.")]
BLOCK_SIZE_HELP = (f"Block size in tokens, {one_of(_mc.BLOCK_SIZES)} (default {_mc.DEFAULT_BLOCK_SIZE}; "
                   f"{_mc.SHORT_CONTEXT_BLOCK_SIZE} for models with a context of at most "
                   f"{_mc.SHORT_CONTEXT // 1024}K).")
BlockSizeOpt = Annotated[Optional[int], Opt("--block-size", "-b", help=BLOCK_SIZE_HELP)]
DtypeOpt = Annotated[str, Opt("--dtype", help=f"auto (bf16 on GPU, fp32 on CPU), {', '.join(DTYPES)}.")]
DeviceOpt = Annotated[Optional[str], Opt("--device", help="cpu or cuda (default: cuda if present).")]
DeviceMapOpt = Annotated[Optional[DeviceMap], Opt(
    "--device-map", help="Shard the model over the GPUs (then the CPU), whole layers each, with accelerate "
    "(`pip install accelerate`): auto (balanced), balanced, balanced_low_0 or sequential. Instead of --device; "
    "not under torchrun.", show_default=False)]
MaxMemoryOpt = Annotated[Optional[str], Opt(
    "--max-memory", help="With --device-map: memory each device may hold, e.g. 0=60GiB,1=60GiB,cpu=100GiB.",
    show_default=False)]
InputsArg = Annotated[Optional[list[str]], typer.Argument(
    help="[MODEL] PROMPT...: an optional model, then prompt files or bundled prompt names "
         "(see `sharedattn prompts list`). Default: the bundled model and prompt.", show_default=False)]

# ---- outputs ---------------------------------------------------------------------------------

OutDirOpt = Annotated[Path, Opt("--out", "-o", help="Output folder.")]
LookupOutOpt = Annotated[Path, Opt("--out", "-o", help="Lookup file to write (JSON).")]
FigureOutOpt = Annotated[Optional[Path], Opt(
    "--out", "-o", help="Figure file (the suffix picks the format: .png, .svg or .pdf), or a folder "
    "(an existing one, or a path without a suffix) for the figure under its default name.",
    show_default=False)]
FigureDirOpt = Annotated[Path, Opt("--out-dir", help="Folder for the figure when --out is not given.")]
JsonOpt = Annotated[bool, Opt("--json", help="Print one JSON document instead of tables.")]

# ---- runs ------------------------------------------------------------------------------------

GraphsOpt = Annotated[bool, Opt("--graphs/--no-graphs", help="On CUDA, record each sparse layer as a CUDA graph "
                                "once per prompt length and replay it in the other layers (default; its decisions "
                                "and layout where the attention runs on Triton, else its decision step), or run it "
                                "eagerly.")]

KernelOpt = Annotated[KernelChoice, Opt(
    "--kernel", help="Attention kernel: auto (flash-attn-4 where it measured faster and is installed, else our "
    "Triton kernel; the torch twin on CPU), triton, or flash (flash-attn-4's block-sparse kernel, Hopper GPUs, "
    "`pip install 'sharedattn[flash]'`; a call that needs SharePrefill's block-mass map of many heads stays "
    "on Triton). "
    "bench kernel/prefill: auto times triton, flash and auto side by side; triton or flash that one.")]

# ---- records, similarity, lookups ------------------------------------------------------------

RecordsOpt = Annotated[Optional[list[Path]], Opt(
    "--records", "--record", "-r", help="Attention records (.json or .safetensors of `sharedattn capture`) "
    "instead of capturing; repeat for several prompts (`heatmap --across` takes two). Needs no model.",
    show_default=False)]
MetricOpt = Annotated[Metric, Opt("--metric", help="jaccard (coverage masks, the paper's), "
                                  "js (probe profiles, the online test) or cosine (block maps).")]
MaskGammaOpt = Annotated[float, Opt("--gamma", help="Mass each coverage-mask row must reach (0-1].")]
JsCombineOpt = Annotated[JsCombine, Opt(
    "--js-combine", help="How js joins the vertical and slash distances: worst (the online test) or mean.")]
ThresholdOpt = Annotated[float, Opt("--threshold", help="A pair is 'alike' above this (0-1).")]
LayerOpt = Annotated[Optional[int], Opt("--layer", "-l", help="Layer to draw (default: the middle layer).",
                                        show_default=False)]
LookupOpt = Annotated[Optional[Path], Opt("--lookup", help="Lookup from `sharedattn cluster` for "
                                          "shareprefill (default: shipped for the bundled model, else built "
                                          "from the bundled prompts and cached).")]
LookupArg = Annotated[Path, typer.Argument(help="Lookup file (JSON) written by `sharedattn cluster`.",
                                           show_default=False)]
ClusterLookupOpt = Annotated[Optional[Path], Opt(
    "--lookup", help="Lookup file (`sharedattn lookup`): its clusters drive `--mask shared` and "
    "`--summary` (default: cluster this record's heads with the `cluster` defaults).", show_default=False)]

# ---- the sparse methods' parameters (prefill, compare) -----------------------------------------

_S = SharePrefillConfig  # holds every vertical-slash, flexprefill and shareprefill field

GammaOpt = Annotated[Optional[float], Opt("--gamma", help=f"Coverage target for budgets and patterns ({_S.gamma}).")]
MinBudgetOpt = Annotated[Optional[int], Opt("--min-budget", help="Minimum vertical/slash budget in tokens "
                                            f"({_S.min_budget}).")]
TauQaOpt = Annotated[Optional[float], Opt("--tau-qa", help=f"Query-aware threshold, sqrt-JS ({_S.tau_qa}).")]
TauSOpt = Annotated[Optional[float], Opt("--tau-s", help=f"Sharing threshold, sqrt-JS ({_S.tau_s}).")]
TauFbOpt = Annotated[Optional[float], Opt("--tau-fb", help=f"Vertical-slash fallback coverage ({_S.tau_fb}).")]
OwnLastRowOpt = Annotated[Optional[bool], Opt("--own-last-row/--paper-last-row", help="shareprefill: a shared "
                                              "head also keeps what its own probe needs in the last query-block "
                                              "row (ours; default "
                                              f"{'on' if _S.own_last_row else 'off'}), or only the pivotal's "
                                              "pattern (the paper).")]
FallbackOpt = Annotated[Optional[FallbackRule], Opt("--fallback", help="shareprefill: a cluster falls back to "
                                                  "vertical-slash when the pivotal's own mask covers --tau-fb of its "
                                                  "mass (covers: the paper) and, with covers-and-sparser (ours), "
                                                  "keeps no more blocks than the pivotal's pattern (default "
                                                  f"{_S.fallback.value}).")]
ExactTailOpt = Annotated[Optional[int], Opt("--exact-tail", help="vertical-slash, flexprefill, shareprefill: the "
                                            "last N query tokens (whole blocks) attend to every key block (ours; "
                                            f"default {_S.exact_tail}: the papers' methods).")]
SinkOpt = Annotated[Optional[int], Opt("--sink-tokens", help=f"a-shape sink ({AShapeConfig.sink_tokens}).")]
LocalOpt = Annotated[Optional[int], Opt("--local-tokens", help=f"a-shape window ({AShapeConfig.local_tokens}).")]


def default_block_size(loaded, block_size: Optional[int]) -> int:
    """The given block size, else the library's default for the model's context (as `capture`)."""
    return _mc.default_block_size(loaded.fingerprint.max_positions, block_size)
