"""`sharedattn lookup show FILE`, `sharedattn lookup validate FILE --model M` and
`sharedattn lookup unshare-idle FILE -o OUT`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import UserError, cli_command, console
from .options import JsonOpt, LookupArg, LookupOutOpt, ModelOpt, RandomInitOpt

lookup_app = typer.Typer(no_args_is_help=True,
                         help="Show, validate and re-prune lookup files (from `sharedattn cluster`).")


def model_config(model: Optional[str], random_init: Optional[str]):
    """(transformers config, model id) of a model from its configuration alone (no weights are loaded)."""
    from sharedattn.analysis.hf import models as hf_models

    if random_init:
        name, _ = hf_models.parse_random_shape(random_init)
        return hf_models.random_config(random_init), f"random:{name}"
    from transformers import AutoConfig

    from .common import quiet_transformers

    quiet_transformers()
    spec = model or hf_models.BUNDLED_MODEL
    if spec in hf_models.NAMED_MODELS:  # converted on first use; not installed: one line, exit 2
        folder = hf_models.model_dir(hf_models.NAMED_MODELS[spec], hf_models.cache_root())
        return AutoConfig.from_pretrained(folder), spec
    path = Path(spec)
    try:
        if path.exists():
            if not (path / "config.json").is_file():
                raise UserError(f"model {spec!r}: not a Hugging Face model folder (no config.json)")
            return AutoConfig.from_pretrained(path), path.resolve().name
        return AutoConfig.from_pretrained(spec, local_files_only=True), spec
    except (OSError, ValueError) as exc:
        raise UserError(f"model {spec!r}: its configuration cannot be read ({str(exc).splitlines()[0]})") from None


def _describe(lookup, path: Path) -> None:
    from rich.table import Table

    from .tables import clusters_table

    m, cal = lookup.model, lookup.calibration
    info = Table(show_header=False, title=str(path))
    info.add_column("field")
    info.add_column("value")
    info.add_row("model", f"{m.model_id}: {m.num_layers} layers x {m.num_heads} heads "
                          f"({m.num_kv_heads} KV), head dim {m.head_dim}")
    info.add_row("calibration", f"{len(cal.prompts)} prompts, block {cal.block_size}, gamma {cal.gamma:g}, "
                                f"metric {cal.metric}")
    for p in cal.prompts:
        info.add_row("  prompt", f"{p.name} ({p.num_tokens} tokens, sha256 {p.sha256[:12]})")
    if cal.layer_windows is not None:
        local = [f"{layer}: {w}" for layer, w in enumerate(cal.layer_windows) if w is not None]
        info.add_row("local layers", f"{len(local)} of {m.num_layers} (layer: window tokens) " + ", ".join(local))
    options = ", ".join(f"{k}={v}" for k, v in cal.options.items() if not isinstance(v, dict))
    info.add_row("options", options or "-")
    console.print(info)
    console.print(clusters_table(lookup))


@cli_command
def show(path: LookupArg, json_out: JsonOpt = False) -> None:
    """Print a lookup: model, calibration provenance and clusters.

    Example: `sharedattn lookup show sharedattn-out/lookup.json`.
    """
    from sharedattn.analysis.offline.lookup import load_lookup

    lookup = load_lookup(path)
    if json_out:
        import json

        typer.echo(json.dumps(lookup.to_json()))
        return
    _describe(lookup, path)


@cli_command
def validate(
    path: LookupArg,
    model: ModelOpt = None,
    random_init: RandomInitOpt = None,
    record: Annotated[Optional[Path], typer.Option(
        "--record", help="Check against the model of this attention record instead of a model.")] = None,
    ignore_id: Annotated[bool, typer.Option(
        "--ignore-id", help="Compare only the shape, not the model id.")] = False,
) -> None:
    """Check a lookup file and that it fits a model, local (sliding-window) layers included
    (exit 2 naming the field if not).

    Examples: `sharedattn lookup validate lookup.json` (the bundled model),
    `sharedattn lookup validate lookup.json --model ./my-model`,
    `sharedattn lookup validate lookup.json --record recs/stdlib-code-4096.json`.
    """
    from sharedattn.analysis.offline.lookup import check_lookup_model, check_lookup_windows, load_lookup

    lookup = load_lookup(path)
    if record is not None:
        if model or random_init:
            raise UserError("give either --record or a model, not both")
        from sharedattn.analysis.files.records import load_record

        meta = load_record(record).meta
        fingerprint, windows = meta.model, meta.layer_windows
    else:
        from sharedattn.analysis.hf.models import fingerprint_of, layer_windows_of

        config, model_id = model_config(model, random_init)
        fingerprint, windows = fingerprint_of(config, model_id), layer_windows_of(config)
    check_lookup_model(lookup, fingerprint, check_id=not ignore_id)
    check_lookup_windows(lookup, windows)
    shared = lookup.shared_clusters
    console.print(f"{path}: valid lookup for {fingerprint.model_id} ({len(lookup.clusters)} clusters, "
                  f"{len(shared)} shared, {sum(c.size for c in shared)} heads shared)", soft_wrap=True)


@cli_command
def unshare_idle(path: LookupArg, out: LookupOutOpt) -> None:
    """Unshare the clusters that shared no head in the lookup's own pruning runs (the rule `cluster
    --prune` applies by default), from its recorded measurement: no model, no GPU.

    An idle cluster still makes its first head pivotal (dense row and block-mass map) in every prefill
    and lends its pattern to nobody. For a lookup pruned with `--prune-keep-idle` or before the rule
    existed; one without a pruning record exits 2. Example: `sharedattn lookup unshare-idle old.json
    -o lookup.json`.
    """
    from sharedattn.analysis.hf.cluster_pruning import unshare_idle as unshare
    from sharedattn.analysis.offline.lookup import load_lookup, save_lookup

    lookup = load_lookup(path)
    pruned = unshare(lookup)
    save_lookup(pruned, out)
    gone = sorted({c.id for c in lookup.shared_clusters} - {c.id for c in pruned.shared_clusters})
    console.print(f"{out}: {len(pruned.shared_clusters)} of {len(lookup.shared_clusters)} shared clusters kept; "
                  f"unshared (idle): {', '.join(map(str, gone)) or 'none'}", soft_wrap=True)


lookup_app.command("show")(show)
lookup_app.command("validate")(validate)
lookup_app.command("unshare-idle")(unshare_idle)


def register(app: typer.Typer) -> None:
    app.add_typer(lookup_app, name="lookup")
