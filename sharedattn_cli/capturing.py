"""Capture-first for every command that takes ``[MODEL] PROMPT...``: load, capture, cache.

Records of (model, prompt tokens, capture config, dtype) are cached under the per-user cache so
`sharedattn heatmap --layer 12` after a first run of the same inputs needs no second forward pass.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sharedattn.kernels.limits import DEFAULT_CHUNK_SIZE

from .common import ModelChoice, UserError, err_console, load_prompts, split_inputs


@dataclass(frozen=True)
class CaptureRequest:
    choice: ModelChoice
    prompts: tuple[str, ...]
    tokens: int
    truncate: bool = False
    block_size: Optional[int] = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    use_cache: bool = True


def record_stem(prompt) -> str:
    from sharedattn.analysis.files.prompts import is_prompt_name

    name = prompt.name if is_prompt_name(prompt.name) else Path(prompt.name).stem
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "prompt"
    return f"{safe}-{prompt.num_tokens}"


def _cache_key(loaded, prompt, config) -> str:
    model = next(loaded.model.parameters())
    payload = {"model": loaded.fingerprint.to_json(), "source": loaded.source, "prompt": prompt.sha256,
               "block": config.resolved_block_size(loaded.fingerprint.max_positions),
               "chunk": config.chunk_size, "dtype": str(model.dtype), "device": model.device.type}
    from sharedattn.analysis.hf.models import layer_windows_of

    windows = layer_windows_of(loaded.model.config)
    if windows is not None:  # records of models with local layers carry them (older cached ones do not)
        payload["layer_windows"] = list(windows)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err_console, transient=True)


def capture_records(req: CaptureRequest, out_dir: Optional[Path] = None, world=None):
    """Capture every prompt; returns ``[(record, sidecar_path or None)]`` and the loaded model.

    ``world`` (``analysis.files.distributed.World``, default one process): under torchrun each rank
    captures its share of the prompts and rank 0 gets every record, in the prompts' order, and
    writes them all once every rank has finished (so a failed run writes no record); the other ranks
    get ``[]``."""
    from sharedattn.analysis.files.distributed import World
    from sharedattn.analysis.hf.capture import CaptureConfig

    config = CaptureConfig(block_size=req.block_size, chunk_size=req.chunk_size)
    loaded = req.choice.load()
    prompts = load_prompts(loaded, list(req.prompts), req.tokens, req.truncate)
    records = (world or World()).map(prompts, lambda _i, prompt: _record(loaded, prompt, config, req.use_cache))
    if records is None:  # not rank 0
        return [], loaded
    return [(record, _save(record, out_dir / record_stem(prompt)) if out_dir is not None else None)
            for record, prompt in zip(records, prompts)], loaded


def _record(loaded, prompt, config, use_cache: bool):
    """One prompt's record: from the per-user cache (``use_cache``), else captured (and cached)."""
    from sharedattn.analysis.files.records import load_record, save_record
    from sharedattn.analysis.hf.capture import capture_prompt
    from sharedattn.analysis.hf.models import cache_root

    cache = cache_root() / "records"
    cached = cache / _cache_key(loaded, prompt, config)
    if use_cache and cached.with_suffix(".json").is_file():
        err_console.print(f"[dim]{prompt.name}: reusing the cached capture {cached}.json[/]")
        return load_record(cached)
    record = _capture_one(loaded, prompt, config, capture_prompt)
    if use_cache:
        cache.mkdir(parents=True, exist_ok=True)
        save_record(record, cached)
    return record


def _save(record, stem: Path) -> Path:
    from sharedattn.analysis.files.records import save_record

    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        return save_record(record, stem)
    except OSError as exc:
        raise UserError(f"cannot write the record {str(stem)!r} ({exc.strerror or exc})") from None


def _capture_one(loaded, prompt, config, capture_prompt):
    layers = loaded.fingerprint.num_layers
    with _progress() as progress:
        task = progress.add_task(f"capture {prompt.name} ({prompt.num_tokens} tokens)", total=layers)
        record, _ = capture_prompt(loaded, prompt, config, on_layer=lambda _: progress.advance(task))
    return record


def load_records(paths: list[Path]):
    from sharedattn.analysis.files.records import check_compatible, load_record

    if not paths:
        raise UserError("no record files given")
    records = [load_record(p) for p in paths]
    check_compatible(records)
    return records


def gather_records(inputs, records, model, random_init, tokens, truncate, block_size, dtype, device,
                   *, min_prompts: int = 1, why: str = "", with_model: bool = False, world=None):
    """Load ``--records`` or capture ``[MODEL] PROMPT...`` first; returns validated records
    (with ``with_model``: and the loaded model, None for ``--records``). ``world``: as
    ``capture_records`` (under torchrun, the captured records are on rank 0 only).

    Fewer than ``min_prompts`` prompts fail before anything is loaded (``why`` names the option).
    """
    from sharedattn.analysis.files.records import check_compatible

    if records:
        if inputs or model or random_init:
            raise UserError("give either --records or [MODEL] PROMPT..., not both")
        _check_count(len(records), min_prompts, why)
        recs = load_records(list(records))
        return (recs, None) if with_model else recs
    model_spec, prompts = split_inputs(inputs, model)
    _check_count(max(len(prompts), 1), min_prompts, why)
    req = CaptureRequest(ModelChoice(model_spec, random_init, dtype, device), tuple(prompts), tokens,
                         truncate, block_size)
    results, loaded = capture_records(req, world=world)
    recs = [r for r, _ in results]
    if recs:  # under torchrun, ranks other than 0 get none
        check_compatible(recs)
    return (recs, loaded) if with_model else recs


def _check_count(count: int, min_prompts: int, why: str) -> None:
    if count < min_prompts:
        raise UserError(f"{why} needs at least {min_prompts} prompts (got {count})")
