#!/usr/bin/env bash
# Wheel-install check (CI, after the tests): does cos3d work when installed from its wheel, not from the
# source tree? The tests cannot tell: they run on the editable install, where files the wheel leaves out
# (once: the presets, read from a repo-level configs/ folder) are still found.
#
#   bash scripts/check_wheel.sh        build the wheel, install it into a fresh venv, then from a temporary
#                                      folder outside the repository: cos3d prepare tabletop (160x120, 12
#                                      views), cos3d train --fast, cos3d query (a non-empty answer), cos3d demo
#
# Steps, each failing loudly:
#  1. the wheel is built (pip wheel --no-deps --no-build-isolation) from a copy of the files git tracks or
#     would track, so no stale build/ folder or egg-info of the checkout goes into it;
#  2. its contents: every cos3d/ file that is package data or code (*.py, *.json, *.yaml, py.typed) is in
#     it, each preset cos3d/configs/*.yaml by name;
#  3. a fresh venv gets the wheel (non-editable, --no-deps); the dependencies come from $COS3D_VENV (.venv)
#     through a .pth file that lists its site-packages as a plain path: Python adds the folder to sys.path
#     but does not read the .pth files inside it, so .venv's editable cos3d (a .pth finder) stays out.
#     Checked in the fresh venv: cos3d is imported from its own site-packages, no sys.path entry exposes the
#     checkout's cos3d/, no editable-install finder is active, the install is not editable, the presets are beside the installed package, and every
#     requirement of the wheel's metadata is installed at a matching version;
#  4. from a temporary folder, with PYTHONPATH unset, the fresh venv's own `cos3d` script: prepare, train
#     --fast (run.json must hold the preset's values), query --json (at least one object), demo (skip it
#     with COS3D_WHEEL_DEMO=0; 2.5 min of the 4.5 on the 2-core development machine).
# Everything is made under one temporary folder, removed at the end (COS3D_WHEEL_KEEP=1 keeps it).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd -P)
VENV=${COS3D_VENV:-.venv}
PY="$VENV/bin/python"
[ -x "$PY" ] && PY="$(cd "$VENV/bin" && pwd)/python"
[ -x "$PY" ] || { echo "check_wheel: FAILED: no $PY (bash scripts/install.sh test makes it; or set COS3D_VENV)" >&2; exit 1; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/cos3d-wheel.XXXXXX")
tmp=$(cd "$tmp" && pwd -P)
if [ "${COS3D_WHEEL_KEEP:-0}" = 1 ]; then trap 'echo "check_wheel: kept $tmp"' EXIT; else trap 'rm -rf "$tmp"' EXIT; fi
case "$tmp/" in "$ROOT"/*) echo "check_wheel: FAILED: the temporary folder $tmp is inside the repository" >&2; exit 1;; esac

t_all=$(date +%s)
t_step=$t_all
step() { local now; now=$(date +%s); echo "check_wheel: $* (+$((now - t_step)) s)"; t_step=$now; }
fail() { echo "check_wheel: FAILED: $*" >&2; exit 1; }

# 1. the wheel, from a copy of the checkout's files
mkdir -p "$tmp/src" "$tmp/dist" "$tmp/work"
git -C "$ROOT" ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done \
  | tar --null -T - -cf - | tar -xf - -C "$tmp/src"
"$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation -w "$tmp/dist" "$tmp/src" \
  || fail "pip wheel could not build the package"
shopt -s nullglob
wheels=("$tmp"/dist/cos3d-*.whl)
shopt -u nullglob
[ "${#wheels[@]}" = 1 ] || fail "expected one cos3d wheel in $tmp/dist, found: $(ls "$tmp/dist")"
wheel=${wheels[0]}
step "built $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB)"

# 2. its contents
"$PY" - "$wheel" "$tmp/src" <<'EOF' || fail "files are missing from the wheel (see above; pyproject's package-data?)"
import sys, zipfile
from pathlib import Path

wheel, src = Path(sys.argv[1]), Path(sys.argv[2])
names = set(zipfile.ZipFile(wheel).namelist())
shipped = lambda p: p.suffix in (".py", ".json", ".yaml", ".yml") or p.name == "py.typed"
files = sorted(p.relative_to(src).as_posix() for p in (src / "cos3d").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts)
expected = [f for f in files if shipped(Path(f))]
missing = [f for f in expected if f not in names]
presets = sorted(f for f in files if f.startswith("cos3d/configs/") and f.endswith((".yaml", ".yml")))
print(f"check_wheel: the wheel holds {len(names)} files; presets: "
      + ", ".join(f"{Path(p).name} ({'in the wheel' if p in names else 'MISSING'})" for p in presets))
if not presets:
    print("check_wheel: no preset cos3d/configs/*.yaml in the source tree: has the folder moved? "
          "update scripts/check_wheel.sh", file=sys.stderr)
    sys.exit(1)
others = [f for f in files if not shipped(Path(f))]
if others:
    print(f"check_wheel: not shipped (not package data): {', '.join(others)}")
for f in missing:
    print(f"check_wheel: MISSING from the wheel: {f}", file=sys.stderr)
sys.exit(1 if missing else 0)
EOF
step "wheel contents: every package file and preset is in it"

# 3. a fresh venv with the wheel, and .venv's packages (not its cos3d) as dependencies
"$PY" -m venv "$tmp/venv"
FRESH="$tmp/venv/bin/python"
"$FRESH" -m pip install --quiet --disable-pip-version-check --no-deps --no-index "$wheel" \
  || fail "the wheel does not install into a fresh venv"
fresh_site=$("$FRESH" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$PY" -c 'import sysconfig; p = sysconfig.get_paths(); print(p["purelib"]); print(p["platlib"]) if p["platlib"] != p["purelib"] else None' \
  > "$fresh_site/_cos3d_check_wheel_deps.pth"
run_fresh() { (cd "$tmp/work" && env -u PYTHONPATH -u PYTHONHOME -u PYTHONSTARTUP PYTHONNOUSERSITE=1 "$@"); }
run_fresh "$FRESH" - "$ROOT" "$fresh_site" <<'EOF' || fail "the fresh venv does not use the installed wheel (see above)"
import importlib.metadata as md
import importlib.resources
import json
import sys
from pathlib import Path

root, site = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
bad = []
import cos3d

where = Path(cos3d.__file__).resolve()
print(f"check_wheel: cos3d {md.version('cos3d')} imported from {where}")
if site not in where.parents:
    bad.append(f"cos3d is imported from {where}, not from the fresh venv's {site}")
# the source tree must not be importable (in CI .venv, whose site-packages is on sys.path, is inside the
# repository: so the test is whether an entry exposes the checkout's cos3d/, not where the entry lies)
for p in sys.path:
    if p and (Path(p) / "cos3d").resolve() == (root / "cos3d").resolve():
        bad.append(f"sys.path holds {p}, which exposes the checkout's cos3d/")
finders = [repr(f) for f in sys.meta_path if "editable" in repr(f).lower() or "editable" in type(f).__module__]
if finders:
    bad.append(f"an editable-install finder is active: {finders}")
dist = md.distribution("cos3d")
direct = json.loads(dist.read_text("direct_url.json") or "{}")
if direct.get("dir_info", {}).get("editable"):
    bad.append(f"cos3d is an editable install: {direct}")
presets = importlib.resources.files("cos3d") / "configs"
names = sorted(p.name for p in presets.iterdir() if p.name.endswith((".yaml", ".yml"))) if presets.is_dir() else []
if not names or site not in Path(str(presets)).resolve().parents:
    bad.append(f"no presets in the installed package ({presets}: {names})")
# every requirement of the wheel (no extras) installed, at a matching version
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
for line in dist.requires or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        bad.append(f"requirement {line!r} is not installed")
        continue
    if req.specifier and not req.specifier.contains(version, prereleases=True):
        bad.append(f"requirement {line!r}: {version} is installed")
for b in bad:
    print(f"check_wheel: {b}", file=sys.stderr)
sys.exit(1 if bad else 0)
EOF
COS3D="$tmp/venv/bin/cos3d"
[ -x "$COS3D" ] || fail "the wheel installed no cos3d script"
head -1 "$COS3D" | grep -qF "$tmp/venv/bin/python" || fail "$COS3D does not run the fresh venv's python: $(head -1 "$COS3D")"
run_fresh "$COS3D" --version
step "fresh venv: the wheel installed non-editable; cos3d, its presets and its script come from it"

# 4. the commands, from a folder outside the repository
run_fresh "$COS3D" prepare tabletop --out scene --width 160 --height 120 --views 12
step "cos3d prepare tabletop"
run_fresh "$COS3D" train --fast --scene scene --out run --no-progress
run_fresh "$FRESH" - "$tmp/work/run/run.json" <<'EOF' || fail "the run does not hold the fast preset's values"
import importlib.resources
import json
import sys

import yaml

run = json.load(open(sys.argv[1]))
preset = yaml.safe_load((importlib.resources.files("cos3d") / "configs" / "fast.yaml").read_text())


def flat(d, pre=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from flat(v, f"{pre}{k}.")
        else:
            yield f"{pre}{k}", v


cfg = dict(flat(run.get("config", {})))
wanted = dict(flat(preset))
diff = {k: (v, cfg.get(k, "absent")) for k, v in wanted.items() if cfg.get(k, "absent") != v}
if "fast" not in run.get("config_files", []) or diff:
    print(f"check_wheel: config_files {run.get('config_files')}; preset value != run.json value: {diff}",
          file=sys.stderr)
    sys.exit(1)
print(f"check_wheel: run.json holds the {len(wanted)} values of the installed fast.yaml")
EOF
step "cos3d train --fast"
answer=$(run_fresh "$COS3D" query --run run --no-server --json "red mug") || fail "cos3d query failed"
printf '%s\n' "$answer" | run_fresh "$FRESH" -c '
import json, sys
a = json.load(sys.stdin)
objs = a.get("objects") or []
print("check_wheel: query %r: %d object(s), %s" % (a.get("query"), len(objs), a.get("reason")))
sys.exit(0 if objs and not a.get("no_target") else 1)' || fail "cos3d query gave an empty answer: $answer"
step "cos3d query"
if [ "${COS3D_WHEEL_DEMO:-1}" != 0 ]; then
  run_fresh "$COS3D" demo --workdir demo --no-progress
  run_fresh "$FRESH" - <<'EOF' || fail "cos3d demo wrote no answers (demo/demo.json)"
import json
import sys

d = json.load(open("demo/demo.json"))
rows = d.get("rows", d) if isinstance(d, dict) else d
found = [r for r in rows if isinstance(r, dict) and r.get("objects")]
print(f"check_wheel: demo.json: {len(rows)} prompts, {len(found)} with objects")
sys.exit(0 if found else 1)
EOF
  step "cos3d demo"
else
  echo "check_wheel: cos3d demo skipped (COS3D_WHEEL_DEMO=0)"
fi
echo "check_wheel: ok in $(( $(date +%s) - t_all )) s"
