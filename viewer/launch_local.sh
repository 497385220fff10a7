#!/usr/bin/env bash
# Browse a run on this machine: loopback only, then open the printed URL (http://localhost:8080).
#   bash viewer/launch_local.sh runs/tabletop [more cos3d view flags, e.g. --port 8090]
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:?usage: launch_local.sh RUN [cos3d view flags]}
shift
exec .venv/bin/cos3d view --run "$run" --host 127.0.0.1 "$@"
