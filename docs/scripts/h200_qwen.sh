#!/usr/bin/env bash
# Qwen2.5-Coder-0.5B on the lent H200, which has no network and no gguf package.
# Here:   split the checked GGUF into 8 parts of ~59 MiB under .carry/q1..q8 (see docs/testing.md);
#         download the gguf wheel into .whl/.
# There:  one call per part (`carry: [".carry/qN"]`, command `bash docs/scripts/h200_qwen.sh part N`),
#         the machine stays warm 30 s between calls and keeps /tmp; then `setup` in the next call
#         (carry .whl) joins the parts, checks the pinned sha256 and converts the model once.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p /tmp/sa/sharedattn /tmp/q
ln -sfn "$root/kernels" /tmp/sa/sharedattn/kernels
ln -sfn "$root/analysis" /tmp/sa/sharedattn/analysis
export SHAREDATTN_CACHE=/tmp/cache PYTHONPATH=/tmp/sa:$root:/tmp/site PYTHONUNBUFFERED=1
sa() { python3 -m sharedattn_cli "$@"; }
case "${1:-}" in
  part) cp "$root/.carry/q$2/"part* /tmp/q/ && ls -l /tmp/q ;;
  setup)
    python3 -m pip install -q --no-index --no-deps --target /tmp/site "$root"/.whl/gguf-*.whl
    cat /tmp/q/part0 /tmp/q/part1 /tmp/q/part2 /tmp/q/part3 /tmp/q/part4 /tmp/q/part5 /tmp/q/part6 \
        /tmp/q/part7 > /tmp/q/qwen.gguf && rm /tmp/q/part*
    python3 - <<'PY'
import os
from pathlib import Path
from sharedattn.analysis.hf.named_models import NAMED_MODELS, assemble, convert
model = NAMED_MODELS["qwen2.5-coder-0.5b"]
cache = Path(os.environ["SHAREDATTN_CACHE"])
gguf = assemble(model, [Path("/tmp/q/qwen.gguf")], cache)  # one file: checks size and sha256
convert(model, gguf, cache / "models" / model.name)
print("converted", model.name)
PY
    ;;
  lookup)  # calibration captures (not the evaluation prompts), clusters, pruning on calibration prompts
    for n in 8192 16384 32000; do sa capture qwen2.5-coder-0.5b stdlib-code licenses --tokens $n -o /tmp/rec; done
    recs=(); for f in /tmp/rec/*.json; do recs+=(--records "$f"); done
    sa cluster "${recs[@]}" --model qwen2.5-coder-0.5b --metric js --distance-threshold 0.3 \
      --prune-on stdlib-code,licenses --tokens 16384 -o "$2" ;;
  compare)  # $2 lookup, $3 out folder, then extra compare options: passkeys, 4-key needles, RULER-style tasks
    lookup=$2 out=$3; shift 3
    sa compare qwen2.5-coder-0.5b --no-text --passkey-lengths 8192,16384,32000 --passkey-depths 0.1,0.5,0.9 \
      --needles 4 --ruler 1 --lookup "$lookup" --methods dense,vertical-slash,flexprefill,shareprefill \
      --no-figures --json -o "$out" "$@" > "$out.json" && tail -c 3000 "$out.json" ;;
  observe)  # the paper's two observations at 32K: similarity within and across 4 prompts ($2: out folder)
    sa capture qwen2.5-coder-0.5b stdlib-code stdlib-prose licenses passkey:depth=0.5 --tokens 32000 -o /tmp/rec32
    recs=(); for f in /tmp/rec32/*.json; do recs+=(--records "$f"); done
    for m in jaccard js; do sa similarity "${recs[@]}" --metric $m --across --json -o /tmp/sim-$m > "$2/similarity-$m.json"; done ;;
  diagnose) python3 "$root/docs/scripts/sharing_diagnosis.py" qwen2.5-coder-0.5b "$2" "$3" 8192 16384 32000 ;;
  *) shift 0; "$@" ;;  # anything else runs with the environment above (e.g. `sa capture ...`)
esac
