"""``cos3d batch`` with the local executor (no Ray), scene lists, and Ray staying optional."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cos3d.apps.batch import read_scene_list, run_names
from cos3d.cli import entrypoint
from cos3d.core.errors import Cos3dError

TINY_RECON = ["--stage", "recon", "--recon.iterations", "3", "--recon.init-max-points", "2000"]


def test_scene_list_and_names(tmp_path):
    p = tmp_path / "scenes.txt"
    p.write_text("# my scenes\n\ndata/a  # first\n data/b/ \n")
    assert read_scene_list(p) == ["data/a", "data/b/"]
    assert run_names(["data/a", "data/b/"]) == ["a", "b"]
    with pytest.raises(Cos3dError, match="both train into a run folder named 'a'"):
        run_names(["x/a", "y/a"])
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(Cos3dError, match="lists no scenes"):
        read_scene_list(tmp_path / "empty.txt")
    with pytest.raises(Cos3dError, match="no such scene list"):
        read_scene_list(tmp_path / "missing.txt")


def test_batch_train_local_bad_scene_fails_alone(tabletop_dir, tmp_path, capsys):
    scenes = tmp_path / "scenes.txt"
    scenes.write_text(f"{tmp_path / 'nope'}\n{tabletop_dir}\n")
    out_root = tmp_path / "runs"
    rc = entrypoint(["batch", "train", str(scenes), "--out-root", str(out_root), "--no-progress", *TINY_RECON])
    text = capsys.readouterr().out
    assert rc == 1, text
    s = json.loads((out_root / "batch-train.json").read_text())
    assert (s["ok"], s["failed"], s["executor"]) == (1, 1, "local")
    bad, good = s["results"]
    assert bad["status"] == "failed" and "not found" in bad["error"]
    assert good["status"] == "ok" and good["metrics"]["gaussians"] > 0
    assert "stage 0" in Path(good["log"]).read_text()  # the scene's output went to its log
    assert "1/2 scenes ok, 1 failed" in text

    # A re-run continues (resume): the finished scene is not trained again.
    scenes.write_text(f"{tabletop_dir}\n")
    assert entrypoint(["batch", "train", str(scenes), "--out-root", str(out_root), "--no-progress", *TINY_RECON]) == 0
    assert "finished earlier, skipped" in Path(good["log"]).read_text()


def test_batch_flag_errors(tmp_path, capsys):
    scenes = tmp_path / "scenes.txt"
    scenes.write_text("a\n")
    assert entrypoint(["batch", "train", str(scenes), "--retries", "-1"]) == 2
    assert "--retries must not be negative" in capsys.readouterr().err
    assert entrypoint(["batch", "eval", str(scenes), "--ray-address", "auto"]) == 2
    assert "--ray-address applies to --executor ray only" in capsys.readouterr().err


def test_local_executor_imports_no_ray(tabletop_dir, tmp_path):
    """prepare masks and batch with the local executor never import Ray (it stays optional)."""
    scenes = tmp_path / "scenes.txt"
    scenes.write_text(f"{tmp_path / 'nope'}\n")
    code = f"""
import sys
from cos3d.cli import entrypoint
assert entrypoint(["prepare", "masks", "--scene", {str(tabletop_dir)!r}, "--masks", "dataset", "--embedder", "labels",
                   "--cache", {str(tmp_path / "cache")!r}, "--no-progress"]) == 0
assert entrypoint(["batch", "train", {str(scenes)!r}, "--out-root", {str(tmp_path / "runs")!r}, "--no-progress"]) == 1
assert "ray" not in sys.modules, "the local executor imported ray"
print("no ray")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0 and "no ray" in r.stdout, r.stderr[-2000:]


def test_ray_executor_without_ray_says_how_to_install(monkeypatch):
    import builtins

    import cos3d.distributed as d

    real_import = builtins.__import__

    def no_ray(name, *a, **kw):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(Cos3dError, match=r"pip install 'cos3d\[ray\]'"):
        d.require_ray()


def test_plan_workers_one_per_gpu_else_cpu_pool():
    from cos3d.distributed.masks import plan_workers

    p = plan_workers({"CPU": 64, "GPU": 8}, views=1000, workers=None, device="auto")
    assert (p.workers, p.num_gpus, p.device) == (8, 1.0, "cuda")
    p = plan_workers({"CPU": 64, "GPU": 8}, views=1000, workers=None, device="cpu")
    assert (p.workers, p.num_gpus, p.device) == (64, 0.0, "cpu")
    p = plan_workers({"CPU": 2}, views=1, workers=4, device="auto")
    assert (p.workers, p.num_gpus, p.device) == (1, 0.0, "cpu")  # never more actors than views
    with pytest.raises(Cos3dError, match="no GPU"):
        plan_workers({"CPU": 2}, views=10, workers=None, device="cuda")
