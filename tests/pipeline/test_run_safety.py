"""Issue 25's guarantees end to end: frame names never become paths (every writer of train, query,
export and eval), one writer per run folder (an OS lock, released however its holder ends), scene
paths kept inside the scene unless the user trusts it, and a private simulation cache."""

from __future__ import annotations

import dataclasses
import os
import signal
import stat
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from cos3d.cli import entrypoint
from cos3d.core.errors import Cos3dError

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "COS3D_THREADS": "1"}  # fmt: skip


# ------------------------------------------------------------------------------------- frame names
def test_safe_name_is_never_a_path_and_keeps_plain_names():
    from cos3d.core.paths import safe_name
    from cos3d.vision.cache import view_path

    for plain in ("0", "frame_001", "IMG-2024.01", "a.b"):
        assert safe_name(plain) == plain
    hostile = ["..", ".", "", "../../etc/passwd", "/abs/path", "a/b", "a\\b", "nul\x00byte", ".hidden", "x" * 500,
               "é", "a b", "\udcff"]
    names = [safe_name(h) for h in hostile]
    for h, n in zip(hostile, names):
        assert n and "/" not in n and "\\" not in n and "\x00" not in n and not n.startswith("."), (h, n)
        assert len(n) <= 130 and Path(n).name == n
    assert len(set(names)) == len(names)  # distinct names stay distinct
    # the 2D cache's file names are unchanged by the move to the shared helper (caches stay valid)
    assert view_path("c", "a/b").name == f"a_b-{zlib.crc32(b'a/b'):08x}.npz"
    assert view_path("c", "frame_1").name == "frame_1.npz"
    from cos3d.apps.batch import run_names

    assert run_names(["data/scene0", "data/x/.."])[0] == "scene0" and ".." not in run_names(["data/x/.."])[0]


def _hostile_names(outside: Path) -> list[str]:
    """Seven frame names that try every way out of a folder."""
    return ["../../../escape0", str(outside / "abs1"), "a/b/sep2", "nul\x003", "..", "..\\win5", ".6"]


def test_hostile_frame_names_write_nothing_outside_the_output_folders(tmp_path, monkeypatch, capsys):
    """A scene whose frame names try ``..``, absolute paths, separators and NUL bytes: train (masks
    cache, --cache-weights), query --masks-out and --ply-out, export and eval write every file inside
    their folders, flat (names escaped), and nothing anywhere else."""
    import cos3d.readers
    from cos3d.pipeline.recon import ReconConfig
    from cos3d.pipeline.runner import train
    from cos3d.pipeline.train_config import TrainConfig
    from cos3d.testing.vision import write_synthetic_scene

    outside = tmp_path / "outside"
    work = tmp_path / "o"  # the outputs sit three levels below it: a '../../../' escape lands in it
    write_synthetic_scene(work / "scene", n_frames=7, width=48, height=32)
    real_load = cos3d.readers.load_scene
    names = _hostile_names(outside)

    def hostile_load(*a, **k):
        scene = real_load(*a, **k)
        rename = dict(zip([f.name for f in scene.frames], names))
        frames = [dataclasses.replace(f, name=rename[f.name]) for f in scene.frames]
        return dataclasses.replace(scene, frames=frames, splits={"train": names[:5], "test": names[5:]})

    import cos3d.pipeline.runner
    import cos3d.pipeline.trained

    for mod in (cos3d.readers, cos3d.pipeline.runner, cos3d.pipeline.trained):  # every module that reads scenes
        monkeypatch.setattr(mod, "load_scene", hostile_load)
    run = work / "runs" / "run"
    cfg = TrainConfig(scene=str(work / "scene"), out=run, iterations=10, cache_weights=True, progress=False,
                      threads=1, recon=ReconConfig.fast(iterations=20, init="random", init_random_points=200))
    train(cfg)
    weights = sorted(p.name for p in (run / "cache" / "weights").iterdir())
    assert len(weights) == 5 and all(p.endswith(".pt") for p in weights), weights
    masks_out, ply_out = work / "q" / "masks", work / "q" / "sel" / "sel.ply"
    rc = entrypoint(["query", "red mug", "--run", str(run), "--masks-out", str(masks_out), "--ply-out", str(ply_out),
                     "--views", ",".join(names), "--json"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert len(list(masks_out.iterdir())) == 7
    assert entrypoint(["export", "--run", str(run), "--out", str(work / "exp")]) == 0
    rc = entrypoint(["eval", "tabletop", "--run", str(run), "--out", str(work / "ev"), "--no-image-prompts"])
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()

    allowed = [work / "scene", run, masks_out, ply_out.parent, work / "exp", work / "ev"]
    files = [p for p in tmp_path.rglob("*") if p.is_file() or p.is_symlink()]
    stray = [p for p in files if not any(p.is_relative_to(a) for a in allowed)]
    assert stray == [], stray
    assert not outside.exists()
    for flat in (run / "cache" / "weights", masks_out, work / "scene" / "cos3d_masks"):
        nested = [p for p in flat.rglob("*") if p.is_dir() and p.parent != flat and p.name != "views"]
        assert nested == [], nested  # a separator in a name never made a sub-folder


# ------------------------------------------------------------------------------------ run lock
def _holder(run: Path, seconds: float = 60) -> subprocess.Popen:
    code = ("import sys, time; from cos3d.pipeline.runlock import writer_lock\n"  # no torch: starts fast
            f"with writer_lock({str(run)!r}):\n    print('locked', flush=True); time.sleep({seconds})")  # fmt: skip
    p = subprocess.Popen([sys.executable, "-c", code], env=_env(), stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_writer_exits_2_at_once_naming_the_holder(tmp_path):
    """Another process holds the run (a training): ``cos3d train`` into the same --out exits 2 in under
    2 s with one line naming that process, and touches nothing."""
    from cos3d.readers.writers import write_scannet
    from cos3d.data.scene import Camera

    cam = Camera(K=np.array([[30.0, 0, 19.5], [0, 30.0, 14.5], [0, 0, 1]]), c2w=np.eye(4), width=40, height=30)
    scene = write_scannet(tmp_path / "s", [cam])
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "cos3d", "train", "--scene", str(scene), "--out", str(run), "--fast"],
                           env=_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
        seconds = time.perf_counter() - t0
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert f"is being written by process {holder.pid}" in lines[0]
        assert seconds < 2.0, f"the second writer took {seconds:.2f} s to give up"
        assert sorted(p.name for p in run.iterdir()) == [".cos3d-lock"]
    finally:
        holder.kill()
        holder.wait()


def test_lock_is_released_when_its_holder_is_killed(tmp_path):
    from cos3d.pipeline.run_folder import lock_holder, writer_lock

    run = tmp_path / "run"
    holder = _holder(run)
    assert lock_holder(run) == holder.pid  # what a reader (a query server) can ask, without blocking
    with pytest.raises(Cos3dError, match=f"process {holder.pid}"):
        with writer_lock(run):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert lock_holder(run) is None  # the kernel dropped it with the process
    with writer_lock(run) as r:
        assert lock_holder(r) == os.getpid()
        with writer_lock(run):  # re-entering in one process is free
            pass
    assert not (run / ".cos3d-lock").exists()


def test_lock_leaves_no_folder_for_a_run_that_wrote_nothing(tmp_path):
    from cos3d.pipeline.run_folder import writer_lock

    with writer_lock(tmp_path / "a" / "b" / "run"):
        pass
    assert not (tmp_path / "a").exists()


# ------------------------------------------------------------------------------ trusted scenes
def test_trusted_scene_may_name_files_outside(tmp_path, monkeypatch):
    """COS3D_TRUST_SCENE_PATHS=1 allows exactly what the refusal names: files outside the scene."""
    import json

    from cos3d.readers import load_scene
    from cos3d.readers.writers import save_image, write_transforms_json
    from cos3d.data.scene import Camera

    cams = [Camera(K=np.array([[30.0, 0, 19.5], [0, 30.0, 14.5], [0, 0, 1]]), c2w=np.eye(4), width=40, height=30)] * 2
    root = write_transforms_json(tmp_path / "s", cams)
    save_image(tmp_path / "elsewhere" / "far.png", np.zeros((30, 40, 3), np.uint8))
    meta = json.loads((root / "transforms.json").read_text())
    meta["frames"][1]["file_path"] = str(tmp_path / "elsewhere" / "far.png")
    (root / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(Cos3dError, match="outside the scene folder"):
        load_scene(root)
    monkeypatch.setenv("COS3D_TRUST_SCENE_PATHS", "1")
    scene = load_scene(root)
    assert scene.frame("far").image_path == tmp_path / "elsewhere" / "far.png"
    with pytest.raises(Cos3dError, match="NUL byte"):  # what no file system can hold stays refused
        meta["frames"][0]["file_path"] = "images/0.png\x00"
        (root / "transforms.json").write_text(json.dumps(meta))
        load_scene(root)


def test_symlink_inside_the_scene_is_fine(tmp_path):
    """A link that stays inside the scene folder is not refused (only leaving it is)."""
    from cos3d.readers import load_scene
    from cos3d.readers.writers import write_scannet
    from cos3d.data.scene import Camera

    cam = Camera(K=np.array([[30.0, 0, 19.5], [0, 30.0, 14.5], [0, 0, 1]]), c2w=np.eye(4), width=40, height=30)
    root = write_scannet(tmp_path / "s", [cam, cam])
    os.replace(root / "color" / "1.png", root / "keep.png")
    (root / "color" / "1.png").symlink_to(Path("..") / "keep.png")
    assert len(load_scene(root).frames) == 2


# ----------------------------------------------------------------------------- simulation cache
def test_simulation_cache_is_private_to_the_user(tmp_path, monkeypatch):
    import cos3d.robot.sim as sim

    monkeypatch.delenv("COS3D_SIM_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    d = sim._cache_dir()
    assert d == tmp_path / "xdg" / "cos3d" / "sim" and stat.S_IMODE(d.stat().st_mode) == 0o700
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "cos3d").write_text("a file where the cache folder goes")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "ro"))
    monkeypatch.setattr(sim, "_PRIVATE_CACHE", None)
    d = sim._cache_dir()  # no usable cache folder: a private one for this process
    assert d.name.startswith("cos3d_sim_") and stat.S_IMODE(d.stat().st_mode) == 0o700
    os.rmdir(d)


# ---------------------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_during_start_up_is_one_line_and_130(tmp_path):
    """SIGINT while cos3d is still importing (torch takes seconds): one line, exit 130, no traceback,
    and no run folder left behind."""
    p = subprocess.Popen([sys.executable, "-m", "cos3d", "train", "--scene", str(tmp_path / "s"), "--out",
                          str(tmp_path / "run")], env=_env(), stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and len(err.strip().splitlines()) == 1 and "interrupted" in err, err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------- readers never write
def test_a_query_never_writes_into_a_run_a_training_holds(trained_run, tmp_path):
    import shutil

    import cos3d

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "query_state.pt").unlink(missing_ok=True)
    ts = cos3d.load(run, device="cpu")
    holder = _holder(run)
    try:
        with pytest.raises(Cos3dError, match=f"being written by process {holder.pid}"):
            ts.save_query_state()
        assert not (run / "query_state.pt").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_file_system_without_locks_still_trains(tmp_path, monkeypatch, caplog):
    """flock is unsupported on some NFS mounts: the run goes on unlocked, with a warning, not a refusal."""
    import errno
    import fcntl

    from cos3d.pipeline.run_folder import writer_lock

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level("WARNING", logger="cos3d"), writer_lock(tmp_path / "run"):
        assert (tmp_path / "run" / ".cos3d-lock").is_file()
    assert "cannot lock the run folder" in caplog.text
