"""`sharedattn cluster [MODEL] PROMPT... -o lookup.json` (or `--records`): the offline lookup."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from sharedattn.analysis.method.method_config import DEFAULT_GAMMA
from sharedattn.analysis.offline.choices import Features, JsCombine, Linkage, Metric
from sharedattn.analysis.offline.cluster_config import DEFAULT_DISTANCE_THRESHOLD, AutoencoderConfig, ClusterConfig

from .capturing import gather_records
from .common import (
    DEFAULT_OUT,
    DEFAULT_TOKENS,
    ModelChoice,
    UserError,
    cli_command,
    console,
    current_world,
    err_console,
    load_prompts,
    similarity_config,
    split_inputs,
)
from .options import (
    BlockSizeOpt,
    DeviceOpt,
    DtypeOpt,
    InputsArg,
    JsCombineOpt,
    JsonOpt,
    LookupOutOpt,
    MaskGammaOpt,
    MetricOpt,
    ModelOpt,
    RandomInitOpt,
    RecordsOpt,
    TokensOpt,
    TruncateOpt,
)
from .ranks import over_ranks
from .tables import clusters_table

_AE = AutoencoderConfig  # the autoencoder options' defaults


def cluster_config(features, linkage, distance_threshold, n_clusters, min_cluster_size, min_similarity):
    return ClusterConfig(features=features, linkage=linkage, distance_threshold=distance_threshold,
                         n_clusters=n_clusters, min_cluster_size=min_cluster_size,
                         min_similarity=min_similarity)


def autoencoder_config(epochs: int, latent_dim: int, grid: int, seed: int):
    from sharedattn.analysis.offline.autoencoder import AutoencoderConfig

    return AutoencoderConfig(grid=grid, latent_dim=latent_dim, epochs=epochs, seed=seed)


def _prune_config(prune: bool, tolerance: float, records, prune_on, keep_idle: bool = False):
    if not prune:
        return None
    if records and not prune_on:
        raise UserError("--prune with --records needs --prune-on PROMPTS (records hold no token ids to rerun)")
    if prune_on is not None and not prune_on.strip(" ,"):
        raise UserError("--prune-on is empty")
    from sharedattn.analysis.hf.cluster_pruning import PruneConfig

    return PruneConfig(tolerance=tolerance, unshare_idle=not keep_idle)


def _pruned(loaded, prompt_specs, tokens, truncate, lookup, config, world):
    """Unshare the clusters that cost fidelity on the calibration prompts; print what was measured.
    ``world``: under torchrun the prompts are split over the ranks."""
    from sharedattn.analysis.hf.cluster_pruning import prune_lookup
    from sharedattn.analysis.method.method_config import make_config

    from .options import default_block_size

    prompts = [p.input_ids for p in load_prompts(loaded, prompt_specs, tokens, truncate)]
    method = make_config("shareprefill", block_size=default_block_size(loaded, None), dense_below=0)
    with err_console.status("pruning: measuring each shared cluster...") as status:
        lookup, report = prune_lookup(loaded, prompts, lookup, method, config,
                                      progress=lambda msg: status.update(f"pruning: {msg}..."), world=world)
    changes = ", ".join(f"{e.id}: {e.kl_change:+.1%}" for e in report.effects if e.shared_heads)
    idle = [e.id for e in report.effects if not e.kept and e.shared_heads == 0]
    err_console.print(f"pruning: KL of final logits (mean over {report.prompts} prompt(s)) with no cluster "
                      f"shared {report.kl_none:.3e}, all shared {report.kl_all:.3e}, after pruning "
                      f"{report.kl_pruned:.3e}; KL change of clusters that shared a head: {changes or 'none'}; "
                      f"unshared: {', '.join(map(str, report.unshared)) or 'none'}"
                      + (f" (of them idle, sharing no head: {', '.join(map(str, idle))})" if idle else ""))
    return lookup


def _latent_codes(recs, ae_config):
    from sharedattn.analysis.offline.autoencoder import latent_codes

    with err_console.status(f"training the autoencoder ({ae_config.epochs} epochs)..."):
        codes, result = latent_codes(recs, ae_config)
    err_console.print(f"[dim]autoencoder: reconstruction MSE {result.losses[0]:.4g} -> {result.losses[-1]:.4g}[/]")
    return codes


@cli_command
@over_ranks
def cluster(
    inputs: InputsArg = None,
    records: RecordsOpt = None,
    out: LookupOutOpt = DEFAULT_OUT / "lookup.json",
    metric: MetricOpt = Metric.JACCARD,
    gamma: MaskGammaOpt = DEFAULT_GAMMA,
    js_combine: JsCombineOpt = JsCombine.WORST,
    features: Annotated[Features, typer.Option(
        "--features", help="Cluster on 1 - mean similarity, or on autoencoder latent codes (the paper's).")
    ] = Features.SIMILARITY,
    linkage: Annotated[Linkage, typer.Option("--linkage", help="Hierarchical linkage (ward: autoencoder only).")
                       ] = Linkage.AVERAGE,
    distance_threshold: Annotated[Optional[float], typer.Option(
        "--distance-threshold",
        help=f"Cut the tree at this distance, in (0, 1] (default {DEFAULT_DISTANCE_THRESHOLD}).")] = None,
    n_clusters: Annotated[Optional[int], typer.Option("--n-clusters", help="Cut into this many clusters instead.")
                          ] = None,
    min_cluster_size: Annotated[int, typer.Option("--min-cluster-size", help="Smaller clusters are not shared.")
                                ] = ClusterConfig.min_cluster_size,
    min_similarity: Annotated[float, typer.Option(
        "--min-similarity", help="Clusters less alike than this on average (0-1) are not shared.")
    ] = ClusterConfig.min_similarity,
    epochs: Annotated[int, typer.Option("--epochs", help="Autoencoder training epochs.")] = _AE.epochs,
    latent_dim: Annotated[int, typer.Option("--latent-dim", help="Autoencoder code size.")] = _AE.latent_dim,
    grid: Annotated[int, typer.Option("--grid", help="Maps are resampled to grid x grid (multiple of 8).")] = _AE.grid,
    seed: Annotated[int, typer.Option("--seed", help="Autoencoder seed.")] = _AE.seed,
    prune: Annotated[bool, typer.Option(
        "--prune", help="Run SharePrefill on the prompts and stop sharing each cluster whose sharing raises "
                        "the KL of the final logits against dense.")
    ] = False,
    prune_on: Annotated[Optional[str], typer.Option(
        "--prune-on", help="Prune on these prompts (comma-separated names or files) instead of the "
                           "calibration prompts; implies --prune. With --records the model comes from "
                           "--model/--random-init (default: the bundled one).")] = None,
    prune_tolerance: Annotated[float, typer.Option(
        "--prune-tolerance", help="With --prune: the KL rise a cluster may cause, as a share of the KL "
                                  "with no sharing (averaged over the prompts).")] = 0.05,
    prune_keep_idle: Annotated[bool, typer.Option(
        "--prune-keep-idle", help="With --prune: keep sharing the clusters that shared no head on the "
                                  "prompts (by default they are unshared: their pivotal heads would run "
                                  "dense and pay the block-mass map for nothing).")] = False,
    json_out: JsonOpt = False,
    model: ModelOpt = None,
    random_init: RandomInitOpt = None,
    tokens: TokensOpt = DEFAULT_TOKENS,
    truncate: TruncateOpt = False,
    block_size: BlockSizeOpt = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
) -> None:
    """Cluster heads over calibration prompts and write the lookup SharePrefill shares within.

    Examples: `sharedattn cluster --records recs/*.json -o lookup.json`,
    `sharedattn cluster stdlib-code stdlib-prose passkey --tokens 4096 --n-clusters 40`,
    `sharedattn cluster --records recs/*.json --features autoencoder --linkage ward`.
    Several GPUs: `torchrun --nproc-per-node 2 -m sharedattn_cli cluster ... --prune` splits the captures
    and the pruning runs over the GPUs.
    """
    from sharedattn.analysis.offline.lookup import lookup_from_records, save_lookup

    sim_config = similarity_config(metric, gamma, js_combine)
    config = cluster_config(features, linkage, distance_threshold, n_clusters, min_cluster_size, min_similarity)
    ae_config = autoencoder_config(epochs, latent_dim, grid, seed) if features is Features.AUTOENCODER else None
    prune_config = _prune_config(prune or prune_on is not None, prune_tolerance, records, prune_on, prune_keep_idle)
    world = current_world()  # under torchrun: captures and pruning runs split over the ranks, rank 0 clusters
    recs, loaded = gather_records(inputs, records, None if records else model, None if records else random_init,
                                  tokens, truncate, block_size, dtype, device, with_model=True, world=world)
    lookup = None
    if world.is_main:
        codes = _latent_codes(recs, ae_config) if ae_config is not None else None
        with err_console.status(f"{metric.value} similarity over {len(recs)} prompt(s)..."):
            lookup = lookup_from_records(recs, sim_config, config, codes=codes, autoencoder=ae_config)
    if prune_config is not None:
        lookup = world.share(lookup)
        if loaded is None:  # --records: load the model now, and make sure the records came from it
            loaded = ModelChoice(model, random_init, dtype, device).load()
            diff = lookup.model.mismatch(loaded.fingerprint)
            if diff:
                raise UserError(f"--prune-on: the records come from another model than {loaded.source} "
                                f"(model.{diff}); pass that model with --model or --random-init")
        specs = [p.strip() for p in prune_on.split(",") if p.strip()] if prune_on else split_inputs(inputs, model)[1]
        lookup = _pruned(loaded, specs, tokens, truncate, lookup, prune_config, world)
    if not world.is_main:  # rank 0 writes and prints
        return
    try:
        path = save_lookup(lookup, out)
    except OSError as exc:
        raise UserError(f"cannot write {str(out)!r} ({exc.strerror})") from None
    if json_out:
        import json

        typer.echo(json.dumps({"lookup": str(path), **lookup.to_json()}))
        return
    console.print(clusters_table(lookup))
    windows = lookup.calibration.windows(lookup.model.num_layers)
    if len(set(windows)) > 1:
        local = [i for i, w in enumerate(windows) if w is not None]
        console.print(f"local (sliding-window) layers {local} and global layers were clustered separately: "
                      "no cluster mixes them", soft_wrap=True)
    console.print(f"lookup: {path}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("cluster")(cluster)
