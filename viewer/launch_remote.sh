#!/usr/bin/env bash
# Browse a run that lives on another machine, without exposing the viewer: it listens on the remote
# machine's loopback and an SSH tunnel brings the port here. Then open http://localhost:PORT locally.
#   bash viewer/launch_remote.sh user@gpu-box /path/to/cos3d /path/to/runs/tabletop [PORT]
set -euo pipefail
host=${1:?usage: launch_remote.sh USER@HOST COS3D_DIR RUN [PORT]}
dir=${2:?usage: launch_remote.sh USER@HOST COS3D_DIR RUN [PORT]}
run=${3:?usage: launch_remote.sh USER@HOST COS3D_DIR RUN [PORT]}
port=${4:-8080}
echo "open http://localhost:${port} once the viewer prints its URL (Ctrl-C stops both)"
exec ssh -t -L "${port}:127.0.0.1:${port}" "$host" \
  "cd '$dir' && .venv/bin/cos3d view --run '$run' --host 127.0.0.1 --port ${port}"
