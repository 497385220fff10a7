#!/usr/bin/env python
"""``cos3d serve`` under load, on loopback only, bounded in requests and time.

    python scripts/bench_serve.py --run RUN                       # a trained run (e.g. a tabletop)
    python scripts/bench_serve.py --run RUN --large 1000000       # also a 1M-Gaussian field resampled from RUN
    python scripts/bench_serve.py --run RUN --requests 64 --max-seconds 20 --fresh 3

1. The in-process engine answers every prompt once (the reference answers).
2. ``cos3d serve --run RUN [--run LARGE] --port 0 --result-cache 0`` starts as its own process (every
   request is answered by the engine: no answer cache; the engine's own text-embedding cache stays on,
   as in any warm server: a warm-up pass asks each prompt once, not counted). Load: for 1, 8 and 32
   concurrent clients (threads, each with its own
   connection per request), ``--requests`` text queries cycling over the prompts, stopped after
   ``--max-seconds``; requests/s, p50/p99 latency, and the share of answers identical to the in-process
   ones (objects, scores, selected Gaussians, reason; timings excepted).
3. A fresh ``cos3d query PROMPT --run RUN --json`` process per prompt (``--fresh`` distinct prompts),
   through the running server (found by its discovery file) and in-process (``--no-server``): wall
   seconds each, and whether the two print the same answer.

The LAST line is one JSON object: per run and concurrency requests/s, p50/p99 ms, correct share; fresh
CLI medians; the machine's CPU count and load average when it started (say when it was shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ABSENT = ["elephant", "a bicycle", "grand piano"]
PARTS = ["the robot's head"]


def _strip(d: dict) -> dict:
    d = {k: v for k, v in d.items() if k not in ("timings", "run", "version", "masks", "ply")}
    for o in d.get("objects", []):
        o.pop("gaussians", None)
    return d


def prompts_of(ts) -> list[str]:
    from cos3d.apps.export import default_vocabulary

    try:
        names = default_vocabulary(ts)
    except Exception:  # noqa: BLE001 - a scene without names: absent prompts only
        names = []
    return names + ABSENT + PARTS


def reference(run: Path, prompts: list[str]) -> dict[str, dict]:
    import cos3d

    ts = cos3d.load(run, device="cpu")
    out = {}
    for p in prompts:
        r = ts.query(p)
        d = _strip(r.to_dict())
        d["selected"] = r.selected.tolist()
        out[p] = d
    return out


def start_server(runs: list[Path], env: dict) -> tuple[subprocess.Popen, str]:
    from cos3d.serve import discovery

    cmd = [sys.executable, "-m", "cos3d", "serve", "--port", "0", "--device", "cpu", "--result-cache", "0",
           "--max-loaded", str(len(runs)), "--timeout", "120"]
    for r in runs:
        cmd += ["--run", str(r)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    os.environ["COS3D_RUNTIME_DIR"] = env["COS3D_RUNTIME_DIR"]
    while True:
        found = discovery.find(runs[-1])
        if found is not None:
            return proc, found[0].url
        if proc.poll() is not None or time.time() - t0 > 600:
            raise SystemExit(f"the server did not start:\n{proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.2)


def load(url: str, name: str, prompts: list[str], want: dict, clients: int, requests: int, max_s: float) -> dict:
    lat: list[float] = []
    ok = [0]
    errors: list[str] = []
    lock = threading.Lock()
    nxt = [0]
    t_end = time.perf_counter() + max_s

    def worker() -> None:
        while True:
            with lock:
                i = nxt[0]
                if i >= requests or time.perf_counter() > t_end:
                    return
                nxt[0] += 1
            p = prompts[i % len(prompts)]
            body = json.dumps({"text": p}).encode()
            req = urllib.request.Request(f"{url}/runs/{name}/query", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            t = time.perf_counter()
            try:
                with urllib.request.urlopen(req, timeout=300) as r:
                    d = json.loads(r.read())
            except Exception as e:  # noqa: BLE001
                with lock:
                    errors.append(repr(e))
                continue
            dt = time.perf_counter() - t
            good = _strip(d) == want[p]
            with lock:
                lat.append(dt)
                ok[0] += int(good)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    lat.sort()
    n = len(lat)
    q = lambda f: lat[min(n - 1, int(round(f * (n - 1))))] * 1e3 if n else float("nan")  # noqa: E731
    return {"clients": clients, "requests": n, "errors": len(errors), "seconds": round(wall, 2),
            "req_per_s": round(n / wall, 2) if wall else 0.0, "p50_ms": round(q(0.5), 1), "p99_ms": round(q(0.99), 1),
            "correct": round(ok[0] / n, 4) if n else 0.0}


def fresh_cli(run: Path, prompts: list[str], env: dict, server: bool) -> tuple[list[float], list[dict]]:
    walls, answers = [], []
    for p in prompts:
        cmd = [sys.executable, "-m", "cos3d", "query", p, "--run", str(run), "--json"] + ([] if server else ["--no-server"])
        t = time.perf_counter()
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        walls.append(time.perf_counter() - t)
        answers.append(_strip(json.loads(out.stdout)))
    return walls, answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a trained run folder")
    ap.add_argument("--large", type=int, default=0, help="also serve the run resampled to this many Gaussians (0: no)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the large run is kept (default: a temp folder)")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--requests", type=int, default=96, help="requests per concurrency level (at most)")
    ap.add_argument("--max-seconds", type=float, default=30.0, help="time per concurrency level (at most)")
    ap.add_argument("--fresh", type=int, default=3, help="fresh cos3d query processes each way")
    args = ap.parse_args()

    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    clients = [int(c) for c in args.clients.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               COS3D_RUNTIME_DIR=str(tmp / "rt"), COS3D_THREADS=os.environ.get("COS3D_THREADS", "1"))
    runs = [args.run]
    import cos3d

    ts = cos3d.load(args.run, device="cpu")
    prompts = prompts_of(ts)
    del ts
    large = None
    if args.large:
        sys.path.insert(0, str(ROOT / "scripts"))
        from bench_scale import resampled_inputs, write_resampled_run

        large = (args.workdir or tmp) / f"large-{args.large}"
        if not (large / "query_state.pt").is_file():
            t = time.perf_counter()
            inputs, _ = resampled_inputs(args.run, args.large)
            write_resampled_run(args.run, inputs, large)
            del inputs
            print(f"large field: {args.large} Gaussians written to {large} in {time.perf_counter() - t:.0f} s")
        runs.append(large)
    want = {str(r): reference(r, prompts) for r in runs}

    proc, url = start_server(runs, env)
    rows = []
    try:
        for r in runs:
            name = r.resolve().name
            warm = load(url, name, prompts, want[str(r)], 1, len(prompts), args.max_seconds)  # each prompt once
            print(f"{name}: warm-up pass over {warm['requests']} prompts (not counted), p50 {warm['p50_ms']} ms, "
                  f"correct {warm['correct']}")
            for c in clients:
                row = load(url, name, prompts, want[str(r)], c, args.requests, args.max_seconds)
                row["run"] = name
                rows.append(row)
        fp = prompts[: args.fresh]
        via_s, via = fresh_cli(args.run, fp, env, server=True)
        in_s, inproc = fresh_cli(args.run, fp, env, server=False)
    finally:
        proc.terminate()
        proc.wait(30)
    ref = {p: {k: v for k, v in d.items() if k != "selected"} for p, d in want[str(args.run)].items()}
    same_cli = sum(a == b == ref[p] for a, b, p in zip(via, inproc, fp))

    print(f"\ncos3d serve on loopback ({os.cpu_count()} CPUs, load average {load_avg} at start); "
          f"{len(prompts)} distinct text prompts cycled, no answer cache")
    print(f"{'run':>16s} {'clients':>7s} {'requests':>8s} {'req/s':>7s} {'p50 ms':>8s} {'p99 ms':>8s} {'correct':>8s} {'errors':>6s}")
    for row in rows:
        print(f"{row['run']:>16s} {row['clients']:7d} {row['requests']:8d} {row['req_per_s']:7.2f} {row['p50_ms']:8.1f} "
              f"{row['p99_ms']:8.1f} {row['correct']:8.3f} {row['errors']:6d}")
    print(f"fresh `cos3d query` (median of {len(fp)}): through the server {statistics.median(via_s):.2f} s, "
          f"in-process {statistics.median(in_s):.2f} s; identical answers {same_cli}/{len(fp)}")
    print(json.dumps({
        "rows": rows, "prompts": len(prompts), "cpus": os.cpu_count(), "load_average_at_start": load_avg,
        "fresh_query_server_s": [round(x, 3) for x in via_s], "fresh_query_inprocess_s": [round(x, 3) for x in in_s],
        "fresh_query_server_median_s": round(statistics.median(via_s), 3),
        "fresh_query_inprocess_median_s": round(statistics.median(in_s), 3),
        "fresh_identical": f"{same_cli}/{len(fp)}", "large": args.large,
    }))


if __name__ == "__main__":
    main()
