#!/usr/bin/env bash
# Install cos3d into ./.venv on a fresh machine.
#   bash scripts/install.sh          the package, the CLI and the offline models
#   bash scripts/install.sh test     the same plus the test extras and Ray with Ray Serve (the ray extra: its tests run in CI),
#                                    and, where apt-get exists and we run as root (CI on Debian), Debian's
#                                    chromium + chromium-driver for the viewer's browser tests (they skip without)
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
if [ "${1:-}" = "test" ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
    && ! { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }; then
  # the browser tests drive the system chromium (no browser download works here); failure only skips them
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
    || echo "install.sh: could not install chromium/chromium-driver; the viewer's browser tests will skip" >&2
fi
SAM2_BUILD_CUDA=0 BUILD_NO_CUDA=1 "${pip[@]}" --no-build-isolation -e ".${extra}"
echo "cos3d installed in $(pwd)/.venv"
