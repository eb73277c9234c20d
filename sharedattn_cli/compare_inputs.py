"""Inputs of `sharedattn compare` besides its prompts (analysis/evaluation/prompt_suite.py): method configs."""
from __future__ import annotations


def method_configs(cfg, loaded, **fields) -> dict:
    """One config per method of the run (dense included), sharing the block size and dense_below."""
    from sharedattn.analysis.method.method_config import make_config

    from .options import default_block_size

    fields["block_size"] = default_block_size(loaded, fields.get("block_size"))
    return {m: make_config(m, **fields) for m in cfg.run_order}
