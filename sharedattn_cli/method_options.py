"""Option aliases for the sparse methods' parameters, shared by `prefill` and `compare`.

Each maps one-to-one onto a field of the method configs (analysis/method/method_config.py); None means
"the config's default", and the defaults quoted in the help are read from the config classes, so
every default and rule is written once, in the library.
"""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from sharedattn.analysis.method.method_config import AShapeConfig, FallbackRule, SharePrefillConfig
from sharedattn.analysis.method.method_config import default_block_size as _default_for_context

from .options import BLOCK_SIZE_HELP

Opt = typer.Option
_S = SharePrefillConfig  # holds every vertical-slash, flexprefill and shareprefill field

MethodBlockOpt = Annotated[Optional[int], Opt("--block-size", "-b", help=BLOCK_SIZE_HELP)]
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
    return _default_for_context(loaded.fingerprint.max_positions, block_size)
