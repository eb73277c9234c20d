"""Which shared clusters cost logit fidelity? Share one cluster at a time and measure.

Loads the model once, runs dense once, then shareprefill with sharing switched off (every
cluster unshared: pivotal and shared decisions disappear, the rest is flexprefill-like), with the
lookup as given, and with each shared cluster alone. For each run it prints the density, the
share of shared heads, and KL(dense || run) and top-1 agreement over the last positions; a
cluster whose row has a higher KL than "none" costs fidelity on this prompt. Results in
docs/fidelity.md ("Which clusters cost KL").

    python docs/scripts/share_ablation.py stdlib-prose --tokens 8192 [--lookup L.json] [--json out.json]
    python docs/scripts/share_ablation.py passkey:depth=0.75,seed=18 --variants none,all,only:4,without:4
"""
import argparse
import json
import sys

from sharedattn.analysis.files.prompts import resolve_prompt
from sharedattn.analysis.hf.cluster_pruning import with_shared
from sharedattn.analysis.hf.models import load_model
from sharedattn.analysis.hf.prefill_run import logit_fidelity, run_prefill
from sharedattn.analysis.method.method_config import MethodName, make_config
from sharedattn.analysis.offline.lookup import load_lookup
from sharedattn_cli.lookup_source import shipped_lookup_path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("prompt")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--lookup", default=None)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--positions", type=int, default=256)
    ap.add_argument("--json", default=None)
    ap.add_argument("--variants", default=None,
                    help="comma list of none, all, only:ID, without:ID (default: none, all, each cluster alone)")
    args = ap.parse_args()
    loaded = load_model()
    fp = loaded.fingerprint
    prompt = resolve_prompt(args.prompt, loaded.tokenizer, tokens=args.tokens, max_tokens=fp.max_positions)
    lookup = load_lookup(args.lookup or shipped_lookup_path(fp.model_id))
    cfg = dict(block_size=args.block_size, dense_below=0)
    dense = run_prefill(loaded, prompt.input_ids, MethodName.DENSE, make_config("dense", **cfg),
                        eval_positions=args.positions)
    shared = [c for c in lookup.clusters if c.shared]
    every = tuple(c.id for c in shared)
    variants = {"none": (), "all": every, **{f"only {c.id}": (c.id,) for c in shared}}
    if args.variants:
        variants = {}
        for spec in args.variants.split(","):
            kind, _, cid = spec.partition(":")
            variants[spec] = {"none": (), "all": every, "only": (int(cid or -1),),
                              "without": tuple(i for i in every if i != int(cid or -1))}[kind]
    rows = []
    print(f"{prompt.name} ({prompt.num_tokens} tokens); {len(shared)} shared clusters", file=sys.stderr)
    for name, keep in variants.items():
        run = run_prefill(loaded, prompt.input_ids, MethodName.SHAREPREFILL,
                          make_config("shareprefill", **cfg), with_shared(lookup, keep),
                          eval_positions=args.positions)
        fid = logit_fidelity(dense.logits, run.logits)
        share = run.trace.decision_shares()
        size = sum(c.size for c in lookup.clusters if c.id in keep)
        row = {"variant": name, "heads_in_clusters": size, "density": run.trace.overall_density(),
               "shared": share.get("shared", 0.0), "pivotal": share.get("pivotal", 0.0),
               "kl_mean": fid.kl_mean, "kl_last": fid.kl_last, "top1": fid.top1_agreement}
        rows.append(row)
        print(f"{name:9s} heads {size:3d} density {row['density']:.3f} shared {row['shared']:.3f} "
              f"pivotal {row['pivotal']:.3f} KL {fid.kl_mean:.3e} top-1 {fid.top1_agreement:.3f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"prompt": prompt.name, "tokens": prompt.num_tokens, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
