#!/usr/bin/env bash
# flash-attn-4 (the `flash` kernel backend) on the lent H200, which has no network: its wheels travel
# with the repository, in two calls of at most 64 MiB (the checkout itself counts).
# Here:   `bash docs/scripts/h200_flash.sh kit` downloads the pinned wheels (the `flash` extra of
#         pyproject.toml, Python 3.12 builds) into .whl-flash/ and lays them out as .carry-flash/f1 (the
#         first 56 MiB of the 92 MB CUDA 13 wheel) and .carry-flash/f2 (its rest and the other wheels).
# There:  call 1 carries .carry-flash/f1: `bash docs/scripts/h200_flash.sh part 1`; the machine stays warm
#         30 s and keeps /tmp; call 2 carries .carry-flash/f2: `bash docs/scripts/h200_flash.sh part 2 &&
#         bash docs/scripts/h200_flash.sh setup && ...` (setup joins the split wheel, installs every wheel with
#         --target /tmp/flsite and says whether the flash backend is available); any other first word runs
#         the rest of the line in this environment, e.g. `bash docs/scripts/h200_flash.sh python3 -m pytest
#         -q tests/test_gpu/test_flash_gpu.py` or `... python3 docs/scripts/flash_bench.py $OUT/flash.json`.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
big=nvidia_cutlass_dsl_libs_cu13-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl
wheels=(flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1
        nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 quack-kernels==0.6.5
        apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5)
mkdir -p /tmp/sa/sharedattn /tmp/fl
ln -sfn "$root/kernels" /tmp/sa/sharedattn/kernels
ln -sfn "$root/analysis" /tmp/sa/sharedattn/analysis
# /tmp/flsite/nvidia_cutlass_dsl/dsl_packages holds `cutlass`: a --target install skips the wheel's .pth
# (kernels/flash.py adds it too, but inductor's generated code may import cutlass in a worker first)
export SHAREDATTN_CACHE=/tmp/cache PYTHONUNBUFFERED=1
export PYTHONPATH=/tmp/sa:$root:/tmp/flsite:/tmp/flsite/nvidia_cutlass_dsl/dsl_packages
case "${1:-}" in
  kit)
    cd "$root"
    py=${PY:-.venv/bin/python}
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d .whl-flash "${wheels[@]}"
    rm -rf .carry-flash && mkdir -p .carry-flash/f1 .carry-flash/f2
    split -b 56M -d -a 1 ".whl-flash/$big" ".carry-flash/f1/$big.part"
    mv ".carry-flash/f1/$big.part1" .carry-flash/f2/
    find .whl-flash -name '*.whl' ! -name "$big" -exec cp {} .carry-flash/f2/ \;
    du -sh .carry-flash/f1 .carry-flash/f2 ;;
  part) cp "$root/.carry-flash/f$2/"* /tmp/fl/ && ls -l /tmp/fl ;;
  setup)
    cat "/tmp/fl/$big.part0" "/tmp/fl/$big.part1" > "/tmp/fl/$big" && rm /tmp/fl/"$big".part*
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/flsite \
      /tmp/fl/*.whl
    python3 -c "import torch; from sharedattn.kernels.backend import flash_unavailable; \
print('torch', torch.__version__, '- flash backend:', flash_unavailable() or 'available')" ;;
  *) "$@" ;;  # anything else runs with the environment above
esac
