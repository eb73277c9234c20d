"""The prefill report's rich rendering (the document: analysis/evaluation/prefill_bench.py)."""
from __future__ import annotations


def sharing_line(doc: dict) -> str | None:
    """SharePrefill's core in one sentence: pivotal heads and the heads that used their patterns."""
    counts = doc.get("decision_counts")
    if doc["method"] != "shareprefill" or not counts or counts["dense"] == sum(counts.values()):
        return None  # not shareprefill, or every head took the dense shortcut (--dense-below)
    total, pivotal, shared = sum(counts.values()), counts["pivotal"], counts["shared"]
    if shared:
        return (f"sharing: {pivotal} pivotal head(s) ran dense and lent their exact patterns; "
                f"{shared} of {total} heads used a pivotal's pattern (shared)")
    if pivotal:
        return (f"sharing: {pivotal} pivotal head(s) ran dense, but no head used their patterns (a cluster "
                "shares only with heads within tau_s of its pivotal, and not at all when the pivotal's own "
                "vertical-slash pattern covers tau_fb of its mass: docs/method.md step 4)")
    return "sharing: no pivotal head (every candidate was query-aware, or the lookup shares no cluster)"


def dense_layers_line(doc: dict) -> str | None:
    """The layers that ran the model's own dense attention, and why (a feature the sparse path does
    not honour: a sliding window shorter than the prompt, soft-capping, sinks, an odd head dim)."""
    layers = doc.get("dense_layers")
    if not layers:
        return None
    by_reason: dict[str, list[int]] = {}
    for row in layers:
        by_reason.setdefault(row["reason"], []).append(row["layer"])
    parts = [f"{reason} (layer{'s' if len(ls) > 1 else ''} {', '.join(map(str, ls))})"
             for reason, ls in by_reason.items()]
    return f"{len(layers)} layer(s) ran the model's dense attention: " + "; ".join(parts)


def kernels_line(doc: dict) -> str | None:
    """The attention backends the method's layers ran on (`--kernel`: auto, triton, flash)."""
    k = doc.get("kernels")
    if not k or not k.get("layers"):
        return None
    names = {"sdpa": "dense SDPA", "reference": "torch twin"}
    parts = [f"{names.get(name, name)} in {n} layer{'s' if n != 1 else ''}"
             for name, n in sorted(k["layers"].items(), key=lambda kv: -kv[1])]
    return f"kernels ({k['requested']}): " + ", ".join(parts)


def _fmt_time(spread: dict) -> str:
    if spread["n"] == 1:
        return f"{spread['median'] * 1000:.1f} ms"
    return f"{spread['median'] * 1000:.1f} ms [{spread['min'] * 1000:.1f}-{spread['max'] * 1000:.1f}]"


def print_report(console, doc: dict) -> None:
    from rich.table import Table

    s, method = doc["summary"], doc["method"]
    console.print(f"command: {doc['command']}\nmachine: {doc['machine']}")
    console.print(f"model {doc['model']['model_id']}, prompt {doc['prompt']['name']} "
                  f"({doc['prompt']['tokens']} tokens), method {method}"
                  + (f", {doc['lookup']}" if doc["lookup"] else ""), soft_wrap=True)
    # one run each: dense runs first and pays the start-up costs (allocator, caches, first launches),
    # so its "speedup" is no speed claim; --bench warms up and takes medians
    t = Table(title="time (median [min-max] over runs)" if doc["bench"] else
              "time (one run each, no warm-up: use --bench to compare speeds)")
    for col in ("", "dense", method, "speedup"):
        t.add_column(col)
    for key, label in (("ttft_s", "time to first token"), ("attention_s", "attention time")):
        speed = s["speedup_ttft" if key == "ttft_s" else "speedup_attention"]
        t.add_row(label, _fmt_time(doc["timing"]["dense"][key]), _fmt_time(doc["timing"][method][key]),
                  f"{speed:.2f}x")
    console.print(t)
    shares = ", ".join(f"{k} {v:.0%}" for k, v in doc["decision_shares"].items() if v > 0)
    graphs = doc.get("decision_graphs") or {}
    console.print(f"density {s['density']:.3f}; heads: {shares}"
                  + (f"; layer steps: {graphs['recorded']} CUDA graph(s) recorded, replayed "
                     f"{graphs['replayed']} times (last run)" if graphs.get("recorded") else ""))
    for line in (kernels_line(doc), dense_layers_line(doc), sharing_line(doc)):
        if line:
            console.print(line, markup=False)
    f = doc["fidelity"]
    line = (f"fidelity vs dense: KL(final) {f['kl_last']:.2e}, KL(mean of last {f['positions']}) "
            f"{f['kl_mean']:.2e}, top-1 final {'same' if f['top1_last'] else 'DIFFERENT'}, "
            f"top-1 agreement {f['top1_agreement']:.1%}")
    if s["mean_layer_error"] is not None:
        line += f"; attention-output error mean {s['mean_layer_error']:.4f}, worst layer {s['worst_layer_error']:.4f}"
    console.print(line)
    gen = doc["generation"]
    if gen["dense"] or gen[method]:
        console.print(f"dense answer:  {gen['dense']!r}", markup=False)
        console.print(f"{method} answer: {gen[method]!r} "
                      f"({'same as dense' if s['answer_matches_dense'] else 'differs from dense'})", markup=False)
        if doc["prompt"]["expected_answer"]:
            console.print(f"expected {doc['prompt']['expected_answer']}: dense "
                          f"{'right' if gen['correct_dense'] else 'wrong'}, {method} "
                          f"{'right' if gen[f'correct_{method}'] else 'wrong'}")
    for name, path in doc.get("outputs", {}).items():
        console.print(f"{name.replace('_', ' ')}: {path}", soft_wrap=True)
