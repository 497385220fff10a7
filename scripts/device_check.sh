#!/usr/bin/env bash
# The one prepared GPU check, for a session that is lent a device machine (see the device tool's README):
# gsplat's CUDA backend built and loaded, the CPU-rasterizer-vs-gsplat parity tests (tests/test_render_gpu.py),
# and the rendering benchmark's CUDA rows. The CPU suite never needs any of it.
#
#   here, once:   bash scripts/device_check.sh fetch
#                 (python 3.12 wheels of what the device image lacks -> .whl/, which .git/info/exclude ignores)
#   the device:   run(command="bash scripts/device_check.sh device", carry=[".whl"], timeout_s=570)
#
# The device half writes under $OUT: device.txt (GPU, driver, torch), gsplat_build.log (the JIT build of
# gsplat's kernels for sm_90, timed: it is most of the run the first time), parity.log (pytest -m gpu),
# bench_render.log (table + last-line JSON). Record the results with the device's name in
# docs/benchmarks.md. Each step keeps going when the one before fails, so one run says as much as it can.
set -uo pipefail
cd "$(dirname "$0")/.."

GSPLAT_VERSION="${GSPLAT_VERSION:-1.5.3}"

fetch() {
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    mkdir -p .whl
    # pure-python wheels; the image already holds torch, numpy, scipy, rich, jaxtyping, ninja, pytest, tqdm
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "gsplat==${GSPLAT_VERSION}" plyfile || exit 1
    ls -la .whl
}

device() {
    : "${OUT:?run this half through the device tool, which sets OUT}"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "no wheels: run 'bash scripts/device_check.sh fetch' here first and carry .whl" | tee "$OUT/device.txt"; exit 1; }
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST="9.0" MAX_JOBS="$(nproc)"
    {
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
        python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
        echo "cpus $(nproc)"
    } > "$OUT/device.txt" 2>&1
    cat "$OUT/device.txt"
    # gsplat compiles its kernels on first use; build them apart so the tests and the benchmark time only rendering
    { time python3 -c "from gsplat.cuda._backend import _C; assert _C is not None, 'gsplat has no CUDA backend'; print('gsplat CUDA backend loaded')"; } \
        > "$OUT/gsplat_build.log" 2>&1
    tail -n 5 "$OUT/gsplat_build.log"
    timeout 150 python3 -m pytest -q -m gpu tests/test_render_gpu.py -p no:cacheprovider > "$OUT/parity.log" 2>&1
    tail -n 5 "$OUT/parity.log"
    timeout 180 python3 scripts/bench_render.py --n 50000 200000 1000000 --res 320x240 640x480 --no-cpu --repeat 10 \
        > "$OUT/bench_render.log" 2>&1
    tail -n 20 "$OUT/bench_render.log"
}

case "${1:-}" in
    fetch) fetch ;;
    device) device ;;
    *) echo "usage: bash scripts/device_check.sh fetch|device (see the comments at the top)" >&2; exit 2 ;;
esac
