"""``cos3d serve`` and ``cos3d.serve.client`` on the shared trained tabletop (loopback, port 0).

- answers through the server (text, no-target, part, within, click, image on a scene frame, masks,
  pick/place, export) are identical to the in-process engine's;
- many clients at once get the answers one client gets, and the server keeps serving;
- bad requests get a 4xx with one line, a slow one 504, a wrong token 401, an oversize body 413;
- a run retrained while served is reloaded (the old version answers while it is rewritten);
- a bounded set of loaded runs (LRU);
- ``cos3d serve`` as a process: its discovery file makes ``cos3d query`` answer through it without
  importing torch; the file goes with the server, and a dead server's file is ignored and removed.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="cos3d serve needs fastapi and uvicorn (pip install 'cos3d[serve]')")

from cos3d.serve import client as cclient  # noqa: E402
from cos3d.core.errors import Cos3dError, ServeError  # noqa: E402
from cos3d.serve import discovery  # noqa: E402
from cos3d.serve.config import Catalogue, ServeConfig  # noqa: E402
from cos3d.serve.server import start_in_thread  # noqa: E402

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[2]


def _strip(d: dict) -> dict:
    """An answer's JSON without what differs between two computations of it (timings)."""
    d = dict(d)
    d.pop("timings", None)
    return d


def _same(a: dict, b: dict) -> bool:
    """The same answer up to float rounding, for answers from another process: torch there may run on
    another thread count (Ray gives a replica 1; this test process runs on 1 after the fixture's training,
    a fresh process on all cores), and a sum over other threads rounds the 7th digit differently; every
    id, count and reason is equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-5 * max(1.0, abs(a))
    return a == b


@pytest.fixture(scope="module")
def local(trained_run):
    import cos3d

    return cos3d.load(trained_run, device="cpu")


@pytest.fixture(scope="module")
def server(trained_run):
    # no answer cache: every request below is answered by the engine (concurrently, under the run lock)
    s = start_in_thread(ServeConfig(run=(trained_run,), port=0, device="cpu", max_upload_mb=1.0, timeout=60,
                                    result_cache=0))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def remote(server):
    return cclient.Client(server.url).load("run")


@pytest.fixture(scope="module")
def probe(local):
    """A test view and, from the in-process answer to "red coffee mug", a pixel on it and its box."""
    res = local.query("red coffee mug")
    assert not res.no_target
    for f in local.scene.split("test"):
        m = res.mask(f.name)
        if m.sum() >= 20:
            ys, xs = np.nonzero(m)
            i = np.argsort(xs + 1000 * ys)[len(xs) // 2]
            box = [float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1]
            return f.name, (int(xs[i]), int(ys[i])), box
    pytest.fail("the red mug is not visible in any test view")


PROMPTS = [
    dict(text="red coffee mug"),
    dict(text="soda can"),
    dict(text="elephant"),                      # no target
    dict(text="the robot's head"),              # part sentence
    dict(text="head", within="robot"),          # part with --within
]


def test_answers_identical_to_in_process(local, remote, probe):
    view, (x, y), box = probe
    frame_file = str(local.scene.frame(view).image_path)  # a scene frame's own file: lifted as view=
    prompts = PROMPTS + [dict(click=(view, x, y)), dict(view=view, box=box), dict(image=frame_file, box=box),
                         dict(text="mug", view=view, box=box, combine="and")]
    assert remote.accepts_paths  # a loopback server: the file is passed by path, not uploaded
    for kw in prompts:
        mine = local.query(**kw)
        theirs = remote.query(**kw)
        assert _strip(theirs.to_dict()) == _strip(mine.to_dict()), kw
        assert np.array_equal(theirs.selected, mine.selected.numpy()), kw
        for a, b in zip(theirs.objects, mine.objects):
            assert np.array_equal(a.gaussians, b.gaussians.numpy())
    assert any(remote.query(text="elephant").no_target for _ in range(1))
    # 2D masks rendered by the server are the in-process masks
    res = remote.query("red coffee mug")
    assert np.array_equal(res.mask(view), local.query("red coffee mug").mask(view))
    assert np.array_equal(res.mask(view, "selected"), local.query("red coffee mug").mask(view, "selected"))


def test_robot_targets_and_export_through_the_server(local, remote, tmp_path):
    from cos3d.data.ply import read_ply
    from cos3d.robot import pick_targets, place_target

    T = np.eye(4)
    T[:3, 3] = [0.5, -0.2, 0.1]
    mine, theirs = pick_targets(local, "red coffee mug", T_base_scene=T), pick_targets(remote, "red coffee mug", T_base_scene=T)
    assert len(mine) == len(theirs) >= 1
    for a, b in zip(mine, theirs):
        assert a.to_dict(points=True) == b.to_dict(points=True)
        assert np.array_equal(a.T_base_grasp, b.T_base_grasp) and np.array_equal(a.grasp.pregrasp(0.1), b.grasp.pregrasp(0.1))
        assert np.array_equal(a.gaussians, b.gaussians)
    far = np.array([3.0, 1.0, 0.0])  # the arm's base elsewhere: reach_from travels to the server
    mine, theirs = pick_targets(local, "blue mug", reach_from=far), pick_targets(remote, "blue mug", reach_from=far)
    assert [a.to_dict() for a in mine] == [b.to_dict() for b in theirs]
    plain = pick_targets(local, "blue mug")  # no base given: no preference, other side-grasp scores
    assert sorted(g.score for g in plain[0].grasps) != sorted(g.score for g in theirs[0].grasps)
    none = pick_targets(remote, "elephant")
    assert not none and none.no_target and none.reason == pick_targets(local, "elephant").reason
    pl_mine, pl_theirs = place_target(local, "into the white bowl"), place_target(remote, "into the white bowl")
    assert [p.to_dict() for p in pl_mine] == [p.to_dict() for p in pl_theirs]
    # export of a selection: the selected Gaussians as a 3DGS .ply
    res = remote.query("soda can")
    out = remote.export(res, tmp_path / "cans.ply")
    g = read_ply(out)
    assert g.num == res.num_gaussians
    assert np.allclose(g.means.numpy(), local.gaussians.means[local.query("soda can").selected].numpy())
    objs = remote.objects()
    assert objs["objects"] and all("names" in o for o in objs["objects"])


def test_concurrent_clients_get_the_same_answers(server, remote):
    want = {json.dumps(kw, sort_keys=True): _strip(remote.query(**kw).to_dict()) for kw in PROMPTS}
    errors, got = [], []

    def worker(i: int) -> None:
        c = cclient.Client(server.url).load("run")
        for k in range(3):
            kw = PROMPTS[(i + k) % len(PROMPTS)]
            try:
                got.append((json.dumps(kw, sort_keys=True), _strip(c.query(**kw).to_dict())))
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    assert len(got) == 48
    assert all(d == want[k] for k, d in got)
    assert cclient.Client(server.url).health()["ok"]


def _post(url: str, data: bytes, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_bad_requests_get_one_line_4xx_and_the_server_keeps_serving(server, remote, probe):
    view, _, _ = probe
    u = server.url
    cases = [
        ("/runs/nope/query", b'{"text": "mug"}', 404, "unknown run 'nope'"),
        ("/runs/run/query", b'{"text": "mug"', 400, "malformed JSON"),
        ("/runs/run/query", b'{"text": 5}', 422, "text"),
        ("/runs/run/query", b'{"txt": "mug"}', 422, "txt"),
        ("/runs/run/query", b'{"text": "  "}', 400, "empty text prompt"),
        ("/runs/run/query", json.dumps({"view": view, "box": [50, 50, 10, 10]}).encode(), 400, "is empty"),
        ("/runs/run/query", json.dumps({"view": view, "box": [1, 2]}).encode(), 400, "box"),
        ("/runs/run/query", b'{"view": "999", "box": [1, 2, 3, 4]}', 400, "unknown view '999'"),
        ("/runs/run/query", b'{"click": "0:100000,5"}', 400, "outside"),
        ("/runs/run/query", b'{"image_b64": "%%%", "box": [1, 2, 3, 4]}', 400, "base64"),
        ("/runs/run/masks", json.dumps({"query": {"text": "mug"}, "view": "nope"}).encode(), 400, "unknown view"),
    ]
    for path, data, status, words in cases:
        code, body = _post(u + path, data)
        assert code == status, (path, data[:60], code, body)
        assert words in body["error"] and "\n" not in body["error"], body
    # a body over --max-upload-mb (1 MiB here): 413 on its Content-Length, before it is read
    conn = http.client.HTTPConnection(u.removeprefix("http://"), timeout=30)
    conn.putrequest("POST", "/runs/run/query")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(2 << 20))
    conn.endheaders(b'{"image_b64": "')
    r = conn.getresponse()
    assert r.status == 413 and "limit of 1 MiB" in json.loads(r.read())["error"]
    conn.close()
    with pytest.raises(ServeError) as e:  # the client says so too
        noise = np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)  # ~1.5 MB as PNG
        remote.query(image=noise, box=[1, 2, 3, 4])
    assert e.value.status == 413
    with pytest.raises(ServeError) as e:
        remote.query(text="mug", box=[1, 2, 3, 4])  # a box without an image
    assert e.value.status == 400 and "--image" in str(e.value)
    with pytest.raises(ServeError) as e:  # an uploaded photo: this offline run cannot embed pixels (one line)
        remote.query(image=np.zeros((40, 40, 3), np.uint8), box=[1, 2, 30, 30])
    assert e.value.status == 400 and "CLIP" in str(e.value)
    assert remote.query("red coffee mug").objects  # still serving


class _Slow:
    """An executor whose answers take ``delay`` seconds (the web layer's deadlines and limits)."""

    def __init__(self, delay: float):
        self.delay = delay
        self.catalogue = Catalogue({"r": Path(".")}, [])

    def call(self, run, op, body):  # noqa: ANN001, ANN201
        time.sleep(self.delay)
        return {"run": run, "op": op}

    def status(self):  # noqa: ANN201
        return []

    def close(self) -> None:
        pass


def test_deadline_token_and_loopback_rules():
    from fastapi.testclient import TestClient

    from cos3d.serve.app import build_app

    with TestClient(build_app(_Slow(0.5), timeout=0.1)) as tc:
        r = tc.post("/runs/r/query", json={"text": "x"})
        assert r.status_code == 504 and "longer than 0.1 s" in r.json()["error"]
        assert tc.get("/health").json()["ok"]  # still serving
        assert tc.get("/openapi.json").json()["paths"]["/runs/{run}/query"]["post"]
    with TestClient(build_app(_Slow(0.0), token="s3cret")) as tc:
        assert tc.post("/runs/r/query", json={"text": "x"}).status_code == 401
        assert tc.post("/runs/r/query", json={"text": "x"}, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert tc.post("/runs/r/query", json={"text": "x"}, headers={"Authorization": "Bearer s3cret"}).json()["op"] == "query"
    with TestClient(build_app(_Slow(0.0), max_body=1000)) as tc:  # a body without Content-Length, as it arrives
        chunks = iter([b'{"text": "', b"a" * 2000, b'"}'])
        r = tc.post("/runs/r/query", content=chunks, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "limit" in r.json()["error"]
        assert tc.post("/runs/r/query", json={"text": "a" * 10}).status_code == 200
    with pytest.raises(Cos3dError, match="--token"):
        ServeConfig(run=(Path("."),), host="0.0.0.0").validate()
    ServeConfig(run=(Path("."),), host="0.0.0.0", token="t").validate()


def _retrain(run: Path, seed: int):  # noqa: ANN202 - the RunRecord, to mark the stage done
    """What `cos3d train --resume` does to a finished run's stage 2: mark it running, replace fields.pt
    atomically (here: the language features permuted), mark it done."""
    import torch

    from cos3d.pipeline.run_folder import RunFolder

    folder = RunFolder(run)
    rec = folder.read_record()
    rec.begin("language")
    data = folder.read_fields()
    g = torch.Generator().manual_seed(seed)
    for lv in data.levels.values():
        lv.language = lv.language[torch.randperm(lv.language.shape[0], generator=g)].clone()
    folder.write_fields(data)
    return rec


def test_reload_after_retraining_and_lru(trained_run, tmp_path):
    import cos3d
    from cos3d.serve.executor import LocalExecutor

    a, b = tmp_path / "a", tmp_path / "b"
    for p in (a, b):
        shutil.copytree(trained_run, p)
    ex = LocalExecutor(Catalogue.from_paths([a, b]), max_loaded=1, device="cpu")
    q = {"text": "red coffee mug"}
    before = ex.call("a", "query", q)
    v0 = before["version"]
    rec = _retrain(a, seed=1)
    during = ex.call("a", "query", q)  # run.json marks stage 2 running: the loaded version answers
    assert during["version"] == v0 and during["selected"] == before["selected"]
    time.sleep(0.01)
    rec.mark("language", 1.0)
    after = ex.call("a", "query", q)
    assert after["version"] != v0
    fresh = cos3d.load(a, device="cpu").query("red coffee mug")
    assert after["selected"] == fresh.selected.tolist()
    assert after["selected"] != before["selected"]
    assert ex.loads == 2 and ex.loaded() == ["a"]
    ex.call("b", "info", None)  # max_loaded=1: b pushes a out
    assert ex.loaded() == ["b"] and ex.loads == 3
    with pytest.raises(ServeError) as e:
        ex.call("c", "info", None)
    assert e.value.status == 404 and "a, b" in str(e.value)


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), COS3D_RUNTIME_DIR=str(tmp_path / "rt"), COS3D_THREADS="1")
    return env


def test_cos3d_query_uses_a_running_server_without_torch(trained_run, local, tmp_path, monkeypatch):
    env = _env(tmp_path)
    monkeypatch.setenv("COS3D_RUNTIME_DIR", env["COS3D_RUNTIME_DIR"])
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    proc = subprocess.Popen([sys.executable, "-m", "cos3d", "serve", "--run", str(run), "--port", "0", "--device", "cpu"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        t0 = time.time()
        while discovery.find(run) is None:
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() - t0 < 120, "the server wrote no discovery file"
            time.sleep(0.2)
        code = ("import sys, json, cos3d.cli; rc = cos3d.cli.entrypoint(sys.argv[1:]); "
                "print('TORCH', 'torch' in sys.modules, file=sys.stderr); sys.exit(rc)")
        out = subprocess.run([sys.executable, "-c", code, "query", "red coffee mug", "--run", str(run), "--json"],
                             env=dict(env, COS3D_SERVE_VERBOSE="1"), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "answered by http://127.0.0.1:" in out.stderr and "TORCH False" in out.stderr
        assert _same(_strip(json.loads(out.stdout)), _strip(local.query("red coffee mug").to_dict()))
        bad = subprocess.run([sys.executable, "-m", "cos3d", "query", "--run", str(run), "--view", "999", "--box", "1,2,3,4"],
                             env=env, capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "unknown view '999'" in bad.stderr
        scene = cclient.load(run, fallback=False)  # the same discovery from Python
        assert isinstance(scene, cclient.RemoteScene) and scene.query("elephant").no_target
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert not list((tmp_path / "rt" / "servers").glob("*.json"))  # removed on the way out


def test_a_dead_servers_discovery_file_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("COS3D_RUNTIME_DIR", str(tmp_path / "rt"))
    run = tmp_path / "r"
    run.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    e = discovery.new_entry(url="http://127.0.0.1:9", host="127.0.0.1", port=9, runs={"r": run}, folders=[],
                            token=None, executor="local")
    e.pid = int(dead.stdout)
    path = discovery.write(e)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert discovery.find(run) is None and not path.exists()
    e.pid = os.getpid()  # alive, but nothing listens on port 9: the client falls back
    discovery.write(e)
    assert discovery.find(run) is not None
    assert cclient.connect(run) is None
    with pytest.raises(ServeError):
        cclient.load(run, fallback=False)


@pytest.mark.timeout(300)
def test_ray_serve_replica_killed_is_replaced(trained_run, local):
    """--executor ray: one Serve deployment per run on a loopback cluster (1 CPU); the same client gets the
    in-process answers; a killed replica is replaced and the next request answered (retried, or a clear 503
    while the replacement loads)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'cos3d[ray]')")
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'ray[serve]')")
    from cos3d.distributed import init_local_ray

    if ray.is_initialized():  # pragma: no cover
        ray.shutdown()
    init_local_ray(num_cpus=1, log_to_driver=False)
    try:
        s = start_in_thread(ServeConfig(run=(trained_run,), port=0, device="cpu", executor="ray"))
        try:
            rs = cclient.Client(s.url).load("run")
            res = rs.query("red coffee mug")
            assert _same(_strip(res.to_dict()), _strip(local.query("red coffee mug").to_dict()))
            assert np.array_equal(res.selected, local.query("red coffee mug").selected.numpy())
            with pytest.raises(ServeError) as e:
                rs.query(view="999", box=[1, 2, 3, 4])
            assert e.value.status == 400 and "unknown view '999'" in str(e.value)
            (pid,) = s.executor.replica_pids("run")
            os.kill(pid, signal.SIGKILL)
            t0, failures = time.time(), []
            while True:
                try:
                    res = rs.query("soda can")
                    break
                except ServeError as e:
                    assert e.status == 503 and "run 'run'" in str(e), str(e)
                    failures.append(str(e))
                    assert time.time() - t0 < 180, failures[-1]
                    time.sleep(1)
            assert _same(_strip(res.to_dict()), _strip(local.query("soda can").to_dict()))
            assert np.array_equal(res.selected, local.query("soda can").selected.numpy())
            assert s.executor.replica_pids("run") != {pid}
        finally:
            s.stop()
    finally:
        ray.shutdown()


def test_a_folder_of_runs_serves_runs_added_later(tmp_path):
    folder = tmp_path / "runs"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "run.json").write_text("{}")
    cat = Catalogue.from_paths([folder])
    assert sorted(cat.runs) == ["a"] and cat.path("b") is None
    (folder / "b").mkdir()
    (folder / "b" / "run.json").write_text("{}")
    assert cat.path("b") == folder / "b"  # a name not known yet: the folder is looked at again
    e = discovery.new_entry(url="http://127.0.0.1:9", host="127.0.0.1", port=9, runs={}, folders=[folder],
                            token=None, executor="local")
    assert e.name_of(folder / "b") == "b" and e.name_of(tmp_path) is None
    (tmp_path / "empty").mkdir()
    with pytest.raises(Cos3dError, match="neither a run folder"):
        Catalogue.from_paths([tmp_path / "empty"])
    with pytest.raises(Cos3dError, match="two runs are named 'a'"):
        (tmp_path / "x" / "a").mkdir(parents=True)
        (tmp_path / "x" / "a" / "run.json").write_text("{}")
        Catalogue.from_paths([folder / "a", tmp_path / "x" / "a"])
