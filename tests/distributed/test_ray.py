"""The Ray executor on a local cluster bound to 127.0.0.1 (2 CPUs, no dashboard).

- ``cos3d prepare masks --executor ray`` writes the same cache (manifest and view files) as the local
  executor, and a second run computes nothing;
- a worker killed mid-run: the job finishes with every view, none computed twice;
- a view that fails is reported by name, the others are recorded, a re-run computes only it;
- ``cos3d batch train`` / ``batch eval`` on Ray: a bad scene fails alone, its error in the summary.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'cos3d[ray]')")

from cos3d.distributed.masks import ModelsFactory, prepare_masks_ray  # noqa: E402
from cos3d.testing.distributed import DatasetHashFactory, InstrumentedFactory, computed_counts  # noqa: E402
from cos3d.vision.models import ModelsConfig  # noqa: E402

pytestmark = pytest.mark.timeout(300)

ORACLE = ModelsConfig(masks="dataset", embedder="labels")


@pytest.fixture(scope="module")
def ray_cluster():
    from cos3d.distributed import init_local_ray

    if ray.is_initialized():  # pragma: no cover
        ray.shutdown()
    init_local_ray(num_cpus=2, log_to_driver=False)
    node = ray.nodes()[0]
    assert node["NodeManagerAddress"] == "127.0.0.1", node["NodeManagerAddress"]
    yield ray
    ray.shutdown()


def _cache_contents(cache: Path) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    man = json.loads((cache / "manifest.json").read_text())
    views = {}
    for f in sorted((cache / "views").glob("*.npz")):
        with np.load(f) as z:
            views[f.name] = {k: z[k] for k in z.files}
    return man, views


def _same(a: Path, b: Path) -> None:
    ma, va = _cache_contents(a)
    mb, vb = _cache_contents(b)
    assert ma == mb
    assert sorted(va) == sorted(vb)
    for name in va:
        assert sorted(va[name]) == sorted(vb[name])
        for k in va[name]:
            assert np.array_equal(va[name][k], vb[name][k]), (name, k)


def test_ray_cache_equals_local_and_is_idempotent(ray_cluster, tabletop_dir, tmp_path):
    from cos3d.readers import load_scene
    from cos3d.vision import prepare_masks

    scene = load_scene(str(tabletop_dir))
    factory = DatasetHashFactory()  # model-free embedder: workers start in seconds
    local = tmp_path / "local"
    prepare_masks(scene, None, *factory(scene, "cpu"), local, progress=False)

    remote = tmp_path / "ray"
    stats, cache = prepare_masks_ray(tabletop_dir, None, factory, remote, workers=2, progress=False)
    assert (stats.done, stats.skipped, stats.workers) == (len(scene.frames), 0, "2 CPU workers (cpu)")
    _same(local, remote)

    # A second run: every view is a hit, nothing recomputed, the same files.
    stats, cache = prepare_masks_ray(tabletop_dir, None, factory, remote, workers=1, progress=False)
    assert (stats.done, stats.skipped) == (0, len(scene.frames)) and cache == remote
    _same(local, remote)


def test_ray_cli_with_the_oracle_models(ray_cluster, tabletop_dir, tmp_path, capsys):
    """``cos3d prepare masks --executor ray`` with the offline models (dataset + labels) in the
    scene's default cache folder: the same files as the local executor's."""
    import shutil

    from cos3d.cli import entrypoint
    from cos3d.readers import load_scene
    from cos3d.vision import prepare_masks

    scene_dir = tmp_path / "scene"
    shutil.copytree(tabletop_dir, scene_dir, ignore=shutil.ignore_patterns("cos3d_masks"))
    scene = load_scene(str(scene_dir))
    local = tmp_path / "local"
    prov, emb = ModelsFactory(ORACLE)(scene, "cpu")
    prepare_masks(scene, scene.split("test"), prov, emb, local, progress=False)

    argv = ["prepare", "masks", "--scene", str(scene_dir), "--masks", "dataset", "--embedder", "labels",
            "--split", "test", "--executor", "ray", "--workers", "1", "--no-progress"]
    assert entrypoint(argv) == 0
    out = capsys.readouterr().out
    n = len(scene.split("test"))
    assert f"{n} views done, 0 skipped" in out and "1 CPU worker (cpu)" in out, out
    (remote,) = (scene_dir / "cos3d_masks").iterdir()
    assert remote.name.startswith("dataset-labels-")
    _same(local, remote)


def test_ray_worker_killed_mid_run_and_failed_view(ray_cluster, tabletop_dir, tmp_path):
    """One run with a worker killed mid-view and one view that raises: the job finishes, every other
    view is cached and recorded, none computed twice, the bad view is named; a re-run computes only it."""
    from cos3d.core.errors import Cos3dError
    from cos3d.readers import load_scene
    from cos3d.vision import load_view

    names = [f.name for f in load_scene(str(tabletop_dir)).frames]
    bad = names[-1]
    log = str(tmp_path / "computed.log")
    killed: list[int] = []

    def kill_once(out: dict) -> None:
        # After the third view, kill the worker that returned it: it is computing its next view now.
        if not killed and out["computed"] and sum(computed_counts(log).values()) >= 3:
            killed.append(out["pid"])
            os.kill(out["pid"], signal.SIGKILL)

    cache = tmp_path / "cache"
    # Dataset masks + a model-free embedder: the workers start (and restart) in seconds.
    factory = InstrumentedFactory(DatasetHashFactory(), delay_s=0.4, fail_on=(bad,), log=log)
    with pytest.raises(Cos3dError, match=rf"1 of {len(names)} views could not be computed \({bad}: RuntimeError: injected"):
        prepare_masks_ray(tabletop_dir, None, factory, cache, workers=2, progress=False, on_view=kill_once)
    assert killed, "no worker was killed"
    counts = computed_counts(log)
    assert sorted(counts) == sorted(set(names) - {bad})  # nothing lost
    assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}  # nothing computed twice
    man = json.loads((cache / "manifest.json").read_text())
    assert sorted(man["views"]) == sorted(set(names) - {bad})
    for name in man["views"]:
        ms, emb = load_view(cache, name)
        assert len(ms) == emb.shape[0]

    stats, _ = prepare_masks_ray(tabletop_dir, None, InstrumentedFactory(DatasetHashFactory(), log=log), cache,
                                 workers=1, progress=False)
    assert (stats.done, stats.skipped, stats.lost_workers) == (1, len(names) - 1, 0)
    assert computed_counts(log) == {n: 1 for n in names}
    assert len(json.loads((cache / "manifest.json").read_text())["views"]) == len(names)


TINY_TRAIN = ["--recon.iterations", "5", "--recon.init-max-points", "3000", "--iterations", "20"]


def test_ray_batch_bad_scene_fails_alone(ray_cluster, tabletop_dir, tmp_path, capsys):
    from cos3d.cli import entrypoint

    scenes = tmp_path / "scenes.txt"
    scenes.write_text(f"{tabletop_dir}\n# not a scene:\n{tmp_path / 'no_such_scene'}\n")
    out_root = tmp_path / "runs"
    common = ["--out-root", str(out_root), "--executor", "ray", "--no-progress"]
    rc = entrypoint(["batch", "train", str(scenes), *common, *TINY_TRAIN])
    text = capsys.readouterr().out
    assert rc == 1, text
    summary = json.loads((out_root / "batch-train.json").read_text())
    assert (summary["ok"], summary["failed"], summary["executor"]) == (1, 1, "ray")
    good, bad = summary["results"]
    assert good["status"] == "ok" and good["metrics"]["gaussians"] > 0, good
    assert (Path(good["run"]) / "fields.pt").is_file()
    assert bad["status"] == "failed" and "no_such_scene" in bad["error"] and "not found" in bad["error"], bad
    assert "no_such_scene" in text and "1/2 scenes ok, 1 failed" in text

    rc = entrypoint(["batch", "eval", str(scenes), *common, "--summary", str(tmp_path / "eval.json")])
    text = capsys.readouterr().out
    assert rc == 1, text
    ev = json.loads((tmp_path / "eval.json").read_text())
    good, bad = ev["results"]
    assert good["status"] == "ok" and 0.0 <= good["metrics"]["mIoU"] <= 1.0 and good["metrics"]["queries"] > 0
    assert bad["status"] == "failed" and "no trained run" in bad["error"]


def test_ray_batch_retries_a_dead_worker(ray_cluster, tmp_path):
    """A scene whose worker dies is run again (--retries); with --retries 0 it fails alone, with the reason."""
    from cos3d.apps.batch import BatchConfig, _Item, run_batch
    from cos3d.testing.distributed import crash_once

    def item(name: str) -> _Item:
        d = tmp_path / name
        d.mkdir()
        return _Item(name, str(d), str(d), str(d / "log"), crash_once, (str(d / "marker"), str(d / "attempts")), {})

    report = run_batch("train", [item("a")], BatchConfig(executor="ray", retries=1, progress=False))
    (r,) = report.results
    assert r.status == "ok" and r.metrics == {"attempts": 2}, r

    report = run_batch("train", [item("b"), item("c")], BatchConfig(executor="ray", retries=0, progress=False))
    assert [x.status for x in report.results] == ["failed", "failed"]
    assert all("its worker died 1 time (--retries 0): WorkerCrashedError" in (x.error or "") for x in report.results), report.results
