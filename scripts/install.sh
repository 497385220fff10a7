#!/usr/bin/env bash
# Install cos3d into ./.venv on a fresh machine.
#   bash scripts/install.sh          the package, the CLI and the offline models
#   bash scripts/install.sh test     the same plus the test extras and Ray with Ray Serve (the ray extra: its tests run in CI),
#                                    and, where apt-get exists and we run as root (CI on Debian), Debian's
#                                    chromium + chromium-driver for the viewer's browser tests (they skip without),
#                                    and, where npm exists, @playcanvas/splat-transform into .venv/npm for the splat
#                                    format interop test (tests/test_export.py; it skips without)
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
if [ "${1:-}" = "test" ]; then
  # an independent implementation of the splat formats (.compressed.ply, .spz, .sog) to check ours against;
  # pinned: tests/fixtures/splats was made with this version. --ignore-scripts: its webgpu dependency's
  # postinstall is not needed for the CPU conversions the test runs
  if command -v npm >/dev/null 2>&1; then
    npm install --prefix .venv/npm --ignore-scripts --no-audit --no-fund --silent @playcanvas/splat-transform@2.7.1 \
      || echo "install.sh: npm could not install @playcanvas/splat-transform; the splat-transform interop test will skip" >&2
  else
    echo "install.sh: npm not found; the splat-transform interop test will skip (install Node.js with npm to run it)" >&2
  fi
fi
SAM2_BUILD_CUDA=0 BUILD_NO_CUDA=1 "${pip[@]}" --no-build-isolation -e ".${extra}"
echo "cos3d installed in $(pwd)/.venv"
