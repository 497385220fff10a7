#!/usr/bin/env bash
# Install cos3d into ./.venv on a fresh machine.
#   bash scripts/install.sh          the package, the CLI and the offline models
#   bash scripts/install.sh test     the same plus the test extras and Ray (the ray extra: its tests run in CI)
# torch goes in first so that sam2's source build (CUDA extension disabled) finds it without
# downloading torch again in an isolated build environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --upgrade pip setuptools wheel
"${pip[@]}" torch torchvision
# robosuite is only read for its object meshes (tabletop scenes): its simulator deps are not needed.
"${pip[@]}" --no-deps robosuite
extra=""
[ "${1:-}" = "test" ] && extra="[test,ray]"
SAM2_BUILD_CUDA=0 BUILD_NO_CUDA=1 "${pip[@]}" --no-build-isolation -e ".${extra}"
echo "cos3d installed in $(pwd)/.venv"
