#!/usr/bin/env bash
# A named Qwen model (MODEL, default qwen2.5-coder-0.5b; also qwen2.5-coder-1.5b) on the lent H200,
# which has no network and no gguf package.
# Here:   `MODEL=... bash docs/scripts/h200_qwen.sh kit` (after `sharedattn models install MODEL`) joins
#         the installed parts, checks the pinned sha256 and splits the GGUF into parts of 54 MiB under
#         the carry folder: .carry/q1..q9 for the 0.5B (469 MiB), .carry/qwen2.5-coder-1.5b/q1..q20
#         for the 1.5B (1066 MiB); and `pip download --no-deps gguf==0.19.0 -d .whl` once.
# There:  one call per part (`carry: [".carry/qN"]` or `[".carry/MODEL/qN"]`, command
#         `MODEL=... bash docs/scripts/h200_qwen.sh part N`), the machine stays warm 30 s between calls
#         and keeps /tmp; then `setup` in the next call (carry .whl) joins the parts, checks the pinned
#         sha256 and converts the model once. Every later subcommand takes the same MODEL.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
MODEL=${MODEL:-qwen2.5-coder-0.5b}
export MODEL
carry="$root/.carry"
[ "$MODEL" = qwen2.5-coder-0.5b ] || carry="$root/.carry/$MODEL"
mkdir -p /tmp/sa/sharedattn /tmp/q
ln -sfn "$root/kernels" /tmp/sa/sharedattn/kernels
ln -sfn "$root/analysis" /tmp/sa/sharedattn/analysis
export SHAREDATTN_CACHE=/tmp/cache PYTHONPATH=/tmp/sa:$root:/tmp/site PYTHONUNBUFFERED=1
sa() { python3 -m sharedattn_cli "$@"; }
case "${1:-}" in
  kit)
    py=${PY:-$root/.venv/bin/python}
    rm -rf "$carry"/q[0-9]* /tmp/q/kit && mkdir -p /tmp/q/kit
    "$py" - <<'PY'
import os
from pathlib import Path
from sharedattn.analysis.hf.named_models import NAMED_MODELS, assemble, part_paths
model = NAMED_MODELS[os.environ["MODEL"]]
paths = part_paths(model)
if paths is None:
    raise SystemExit(f"{model.name} is not installed here: run `{model.install_command()}` first")
print("checked", assemble(model, paths, Path("/tmp/q/kit")))  # joined, size and sha256 checked
PY
    gguf=$(ls /tmp/q/kit/*.gguf 2>/dev/null || true)
    [ -n "$gguf" ] || gguf=$("$py" -c "import os; from sharedattn.analysis.hf.named_models import \
NAMED_MODELS, part_paths; print(part_paths(NAMED_MODELS[os.environ['MODEL']])[0])")
    split -b 54M -d -a 2 "$gguf" /tmp/q/kit/part
    i=1; for f in /tmp/q/kit/part*; do mkdir -p "$carry/q$i" && mv "$f" "$carry/q$i/"; i=$((i + 1)); done
    rm -rf /tmp/q/kit && du -sh "$carry" && echo "$((i - 1)) parts" ;;
  part) cp "$carry/q$2/"part* /tmp/q/ && ls -l /tmp/q ;;
  setup)
    python3 -m pip install -q --no-index --no-deps --target /tmp/site "$root"/.whl/gguf-*.whl
    cat $(ls /tmp/q/part* | sort -V) > /tmp/q/qwen.gguf && rm /tmp/q/part*
    python3 - <<'PY'
import os
from pathlib import Path
from sharedattn.analysis.hf.named_models import NAMED_MODELS, assemble, convert
model = NAMED_MODELS[os.environ["MODEL"]]
cache = Path(os.environ["SHAREDATTN_CACHE"])
gguf = assemble(model, [Path("/tmp/q/qwen.gguf")], cache)  # one file: checks size and sha256
convert(model, gguf, cache / "models" / model.name)
print("converted", model.name)
PY
    ;;
  lookup)  # calibration captures (not the evaluation prompts), clusters, pruning on calibration prompts
    # at PRUNE_TOKENS (default 16384, the shipped lookup's); $2 the lookup to write
    for n in 8192 16384 32000; do sa capture "$MODEL" stdlib-code licenses --tokens $n -o /tmp/rec; done
    recs=(); for f in /tmp/rec/*.json; do recs+=(--records "$f"); done
    sa cluster "${recs[@]}" --model "$MODEL" --metric js --distance-threshold 0.3 \
      --prune-on stdlib-code,licenses --tokens "${PRUNE_TOKENS:-16384}" -o "$2" ;;
  compare)  # $2 lookup, $3 out folder, then extra compare options: passkeys, 4-key needles, RULER-style tasks
    lookup=$2 out=$3; shift 3
    sa compare "$MODEL" --no-text --passkey-lengths 8192,16384,32000 --passkey-depths 0.1,0.5,0.9 \
      --needles 4 --ruler 1 --lookup "$lookup" --methods dense,vertical-slash,flexprefill,shareprefill \
      --no-figures --json -o "$out" "$@" > "$out.json" && tail -c 3000 "$out.json" ;;
  observe)  # the paper's two observations at 32K: similarity within and across 4 prompts ($2: out folder)
    sa capture "$MODEL" stdlib-code stdlib-prose licenses passkey:depth=0.5 --tokens 32000 -o /tmp/rec32
    recs=(); for f in /tmp/rec32/*.json; do recs+=(--records "$f"); done
    for m in jaccard js; do sa similarity "${recs[@]}" --metric $m --across --json -o /tmp/sim-$m > "$2/similarity-$m.json"; done ;;
  diagnose) python3 "$root/docs/scripts/sharing_diagnosis.py" "$MODEL" "$2" "$3" 8192 16384 32000 ;;
  *) shift 0; "$@" ;;  # anything else runs with the environment above (e.g. `sa capture ...`)
esac
