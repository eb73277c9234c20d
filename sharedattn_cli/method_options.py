"""Option aliases for the sparse methods' parameters, shared by `prefill` and `compare`.

Each maps one-to-one onto a field of the method configs (analysis/method/method_config.py); None means
"the config's default", so the defaults live in one place.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Opt = typer.Option

LookupOpt = Annotated[Optional[Path], Opt("--lookup", "-l", help="Lookup from `sharedattn cluster` for "
                                          "shareprefill (default: shipped for the bundled model, else built "
                                          "from the bundled prompts and cached).")]
MethodBlockOpt = Annotated[Optional[int], Opt("--block-size", "-b", help="Block size (default 128; 64 for "
                                              "models with a context of at most 8K).")]
GammaOpt = Annotated[Optional[float], Opt("--gamma", help="Coverage target for budgets and patterns (0.95).")]
MinBudgetOpt = Annotated[Optional[int], Opt("--min-budget", help="Minimum vertical/slash budget in tokens (1024).")]
TauQaOpt = Annotated[Optional[float], Opt("--tau-qa", help="Query-aware threshold, sqrt-JS (0.1).")]
TauSOpt = Annotated[Optional[float], Opt("--tau-s", help="Sharing threshold, sqrt-JS (0.5).")]
TauFbOpt = Annotated[Optional[float], Opt("--tau-fb", help="Vertical-slash fallback coverage (0.95).")]
OwnLastRowOpt = Annotated[Optional[bool], Opt("--own-last-row/--paper-last-row", help="shareprefill: a shared "
                                              "head also keeps what its own probe needs in the last query-block "
                                              "row (ours; default on), or only the pivotal's pattern (the paper).")]
ExactTailOpt = Annotated[Optional[int], Opt("--exact-tail", help="vertical-slash, flexprefill, shareprefill: the "
                                            "last N query tokens (whole blocks) attend to every key block (ours; "
                                            "default 0: the papers' methods).")]
SinkOpt = Annotated[Optional[int], Opt("--sink-tokens", help="a-shape sink (128).")]
LocalOpt = Annotated[Optional[int], Opt("--local-tokens", help="a-shape window (1024).")]


def default_block_size(loaded, block_size: Optional[int]) -> int:
    """64 for models with a context of at most 8K (as `capture`), else 128, unless given."""
    if block_size is not None:
        return block_size
    return 64 if (loaded.fingerprint.max_positions or 0) <= 8192 else 128
