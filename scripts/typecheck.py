#!/usr/bin/env python
"""Type-check ``cos3d/`` with mypy against a committed per-file baseline that may only shrink.

    python scripts/typecheck.py                     # check: fails if any file has more errors than its baseline
    python scripts/typecheck.py --update            # lower the baseline to the current counts (never raises one)
    python scripts/typecheck.py --update --force    # rewrite the baseline whatever the counts (after a refactor)
    python scripts/typecheck.py --python-executable /path/to/venv/bin/python   # mypy installed elsewhere

mypy's settings are ``[tool.mypy]`` in pyproject.toml; its version is pinned in the ``test`` extra. The
baseline (``scripts/typecheck_baseline.json``) maps each file to its number of mypy errors. The check fails
when a file has more errors than its baseline, when a file that is not in the baseline has errors (a moved
or new file counts as new), when mypy itself fails (a crash, a config error, a blocking syntax error) or
when its summary line disagrees with the errors read. Fewer errors than the baseline pass, with a
reminder to run ``--update`` so the improvement cannot be lost again. A table is printed, then one JSON
line (the last line of the output).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "scripts" / "typecheck_baseline.json"
TARGET = "cos3d"

_LINE = re.compile(r"^(?P<path>[^:\n]+?):(?P<line>\d+)(?::(?P<col>\d+))?: (?P<sev>error|note|warning): ")
_FOUND = re.compile(r"^Found (?P<n>\d+) errors? in (?P<files>\d+) files? \(checked (?P<checked>\d+) source files?\)")
_SUCCESS = re.compile(r"^Success: no issues found in (?P<checked>\d+) source files?")


def mypy_version() -> str:
    out = subprocess.run([sys.executable, "-m", "mypy", "--version"], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"typecheck: mypy is not installed for {sys.executable} "
                 f"(bash scripts/install.sh test installs it): {out.stderr.strip() or out.stdout.strip()}")
    m = re.search(r"mypy (\S+)", out.stdout)
    return m.group(1) if m else out.stdout.strip()


def run_mypy(python_executable: str | None) -> tuple[dict[str, int], int, str]:
    """Run mypy on ``cos3d/``; return (errors per file, files checked, raw output)."""
    cmd = [sys.executable, "-m", "mypy", "--no-pretty", "--no-color-output", "--show-error-codes",
           "--error-summary"]
    if python_executable:
        cmd += ["--python-executable", python_executable]
    cmd.append(TARGET)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    counts: dict[str, int] = {}
    for line in out.splitlines():
        m = _LINE.match(line)
        if m and m.group("sev") == "error":
            path = Path(m.group("path"))
            if path.is_absolute():
                path = path.resolve().relative_to(ROOT)
            key = path.as_posix()
            counts[key] = counts.get(key, 0) + 1
    found = next((m for m in map(_FOUND.match, out.splitlines()) if m), None)
    success = next((m for m in map(_SUCCESS.match, out.splitlines()) if m), None)
    total = sum(counts.values())
    # exit 0: clean, 1: errors found; anything else (2: crash, bad config, blocking error) is a failure here
    if proc.returncode not in (0, 1) or not (found or success):
        sys.stderr.write(out[-8000:])
        sys.exit(f"typecheck: mypy did not finish a normal check (exit {proc.returncode}); see its output above")
    if found:
        if int(found.group("n")) != total:
            sys.stderr.write(out[-8000:])
            sys.exit(f"typecheck: mypy reports {found.group('n')} errors but {total} were read; see above")
        checked = int(found.group("checked"))
    else:
        assert success is not None
        if total:
            sys.exit(f"typecheck: mypy reports success but {total} error lines were read")
        checked = int(success.group("checked"))
    return counts, checked, out


def load_baseline() -> dict:
    if not BASELINE.exists():
        return {"checker": "mypy", "version": None, "files": {}}
    return json.loads(BASELINE.read_text())


def write_baseline(counts: dict[str, int], version: str) -> None:
    files = {k: counts[k] for k in sorted(counts) if counts[k] > 0}
    data = {
        "checker": "mypy",
        "version": version,
        "note": "mypy errors per file in cos3d/ (scripts/typecheck.py); counts may only go down: "
                "python scripts/typecheck.py --update",
        "total": sum(files.values()),
        "files": files,
    }
    BASELINE.write_text(json.dumps(data, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--update", action="store_true", help="rewrite the baseline with the current counts "
                    "(refused when a count would go up, unless --force)")
    ap.add_argument("--force", action="store_true", help="with --update: also accept counts that went up")
    ap.add_argument("--python-executable", metavar="PATH",
                    help="the interpreter whose installed packages mypy reads (default: this one)")
    ap.add_argument("--show", action="store_true", help="print mypy's error lines of the files over baseline")
    args = ap.parse_args(argv)
    if args.force and not args.update:
        ap.error("--force only goes with --update")

    version = mypy_version()
    t0 = time.perf_counter()
    counts, checked, out = run_mypy(args.python_executable)
    seconds = round(time.perf_counter() - t0, 1)

    base = load_baseline()
    base_files: dict[str, int] = base.get("files", {})
    worse = {f: (n, base_files.get(f, 0)) for f, n in counts.items() if n > base_files.get(f, 0)}
    new = sorted(f for f in worse if f not in base_files)
    better = {f: (counts.get(f, 0), b) for f, b in base_files.items() if counts.get(f, 0) < b}

    rows = sorted(set(counts) | set(base_files))
    width = max([len(r) for r in rows] + [len("file")])
    print(f"{'file':<{width}}  {'now':>5}  {'base':>5}  ")
    for f in rows:
        n, b = counts.get(f, 0), base_files.get(f, 0)
        mark = "NEW FILE WITH ERRORS" if f in new else "WORSE" if f in worse else "better" if n < b else ""
        print(f"{f:<{width}}  {n:>5}  {b:>5}  {mark}")
    total, base_total = sum(counts.values()), sum(base_files.values())
    print(f"{'total':<{width}}  {total:>5}  {base_total:>5}  ({checked} files checked by mypy {version} "
          f"in {seconds} s)")
    if base.get("version") and base["version"] != version:
        print(f"note: the baseline was made with mypy {base['version']}, this is mypy {version}: "
              f"counts may differ for that reason alone (the test extra pins the version)")
    if args.show and worse:
        print()
        for line in out.splitlines():
            m = _LINE.match(line)
            if m and Path(m.group("path")).as_posix() in worse:
                print(line)

    ok = not worse
    action = "checked"
    if args.update:
        if worse and not args.force:
            print(f"typecheck: --update refused: {len(worse)} file(s) have more errors than their baseline "
                  f"(fix them, or use --update --force after a deliberate change such as a refactor)")
        else:
            write_baseline(counts, version)
            action = "baseline rewritten" + (" (forced)" if args.force else "")
            print(f"typecheck: {action}: {BASELINE.relative_to(ROOT)} ({total} errors)")
            ok = True
    elif worse:
        print(f"typecheck: FAILED: {len(worse)} file(s) have more mypy errors than the baseline "
              f"({BASELINE.relative_to(ROOT)}); run with --show for the lines, or `python -m mypy cos3d`")
    elif better:
        print(f"typecheck: ok; {len(better)} file(s) have fewer errors than the baseline: "
              f"python scripts/typecheck.py --update locks that in")
    else:
        print("typecheck: ok")

    print(json.dumps({
        "ok": ok, "action": action, "checker": "mypy", "version": version, "baseline_version": base.get("version"),
        "total": total, "baseline_total": base_total, "files_checked": checked, "seconds": seconds,
        "worse": {f: {"now": n, "baseline": b} for f, (n, b) in sorted(worse.items())},
        "new_files": new,
        "better": {f: {"now": n, "baseline": b} for f, (n, b) in sorted(better.items())},
    }))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
