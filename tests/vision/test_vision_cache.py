"""The per-view cache: hits, misses on any key change, corrupt files, load_view, and the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cos3d.cli import entrypoint
from cos3d.core.errors import Cos3dError
from cos3d.vision import create_embedder, create_mask_provider, load_manifest, load_view, prepare_masks
from cos3d.vision.cache import view_path
from cos3d.testing.vision import write_synthetic_scene


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_synthetic_scene(tmp_path_factory.mktemp("cache_scene") / "scene", n_frames=3)


@pytest.fixture(scope="module")
def labels():
    return create_embedder("labels")


def test_hits_misses_and_load_view(scene, labels, tmp_path):
    cache = tmp_path / "cache"
    prov = create_mask_provider("dataset", scene=scene)
    st = prepare_masks(scene, None, prov, labels, cache, progress=False)
    assert (st.total, st.done, st.skipped, st.corrupt) == (3, 3, 0, 0) and st.views_per_s > 0
    man = load_manifest(cache)
    assert man["dim"] == 384 and man["embedder"]["model_id"] == "labels:all-MiniLM-L6-v2"
    assert man["provider"]["model_id"] == "dataset:instance-maps" and man["views"] == ["0", "1", "2"]
    # second run: all hits
    st2 = prepare_masks(scene, None, prov, labels, cache, progress=False)
    assert (st2.done, st2.skipped) == (0, 3)
    # the cached view equals a fresh computation; embeddings are fp16
    frame = scene.frames[2]
    ms, emb = load_view(cache, frame)
    fresh = prov.generate(frame.load_image(), frame)
    np.testing.assert_array_equal(ms.masks, fresh.masks)
    np.testing.assert_array_equal(ms.level, fresh.level)
    np.testing.assert_array_equal(ms.box, fresh.box)
    np.testing.assert_array_equal(ms.source_id, fresh.source_id)
    np.testing.assert_array_equal(ms.is_part, fresh.is_part)
    assert ms.names == fresh.names
    assert emb.dtype == np.float16 and emb.shape == (len(fresh), 384)
    np.testing.assert_allclose(emb.astype(np.float32), labels.embed_masks(frame.load_image(), fresh), atol=2e-3)
    assert load_view(cache, "2")[1].shape == emb.shape  # by frame name too
    # a changed parameter is a miss for every view; then the old cache is stale for load_view
    perturbed = create_mask_provider("dataset", scene=scene, perturb=0.5, seed=3)
    st3 = prepare_masks(scene, [scene.frames[0]], perturbed, labels, cache, progress=False)
    assert (st3.done, st3.skipped) == (1, 0)
    load_view(cache, "0")
    with pytest.raises(Cos3dError, match="other models/settings"):
        load_view(cache, "1")
    with pytest.raises(Cos3dError, match="not cached"):
        load_view(cache, "nope")
    with pytest.raises(Cos3dError, match="no mask cache"):
        load_view(tmp_path / "elsewhere", "0")


def test_corrupt_file_is_marked_missing_then_recomputed_with_a_note(scene, labels, tmp_path, capsys):
    cache = tmp_path / "cache"
    prov = create_mask_provider("dataset", scene=scene)
    prepare_masks(scene, None, prov, labels, cache, progress=False)
    p = view_path(cache, "1")
    good = p.read_bytes()
    p.write_bytes(good[: len(good) // 2])  # truncated write from some other tool
    with pytest.raises(Cos3dError) as ei:
        load_view(cache, "1")
    msg = str(ei.value)
    assert "\n" not in msg and str(p) in msg and "corrupt" in msg and "--resume" in msg
    # the manifest no longer vouches for it: a resumed run redoes the masks stage instead of looping
    assert "1" not in load_manifest(cache)["views"]
    capsys.readouterr()
    st = prepare_masks(scene, None, prov, labels, cache, progress=False)
    assert (st.done, st.skipped, st.corrupt) == (1, 2, 1)
    assert f"note: {p}: corrupt mask-cache file" in capsys.readouterr().err
    ms, emb = load_view(cache, "1")
    assert len(ms) == emb.shape[0] > 0
    assert "1" in load_manifest(cache)["views"]


def test_deleted_view_is_marked_missing(scene, labels, tmp_path):
    cache = tmp_path / "cache"
    prov = create_mask_provider("dataset", scene=scene)
    prepare_masks(scene, None, prov, labels, cache, progress=False)
    view_path(cache, "2").unlink()
    with pytest.raises(Cos3dError, match=r"2\.npz: view '2' is not cached; it is now marked missing"):
        load_view(cache, "2")
    assert "2" not in load_manifest(cache)["views"]
    assert prepare_masks(scene, None, prov, labels, cache, progress=False).done == 1


def test_image_change_is_a_miss(scene, labels, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(scene.root, root)
    sc = write_synthetic_scene(root, n_frames=3)  # same files
    cache = tmp_path / "cache"
    prov = create_mask_provider("dataset", scene=sc)
    prepare_masks(sc, None, prov, labels, cache, progress=False)
    from PIL import Image

    img = np.asarray(Image.open(sc.frames[0].image_path)).copy()
    img[0, 0] ^= 1
    Image.fromarray(img).save(sc.frames[0].image_path)
    st = prepare_masks(sc, None, prov, labels, cache, progress=False)
    assert (st.done, st.skipped) == (1, 2)


def test_cli_prepare_masks_dataset_labels(scene, tmp_path, capsys):
    cache = tmp_path / "cli_cache"
    args = [
        "prepare",
        "masks",
        "--scene",
        str(scene.root),
        "--masks",
        "dataset",
        "--embedder",
        "labels",
        "--cache",
        str(cache),
        "--no-progress",
    ]
    assert entrypoint(args) == 0
    out = capsys.readouterr().out
    assert "3 views done, 0 skipped" in out and "views/s" in out and "oracle-2D" in out
    assert entrypoint(args) == 0
    assert "0 views done, 3 skipped" in capsys.readouterr().out
    assert json.loads((cache / "manifest.json").read_text())["dim"] == 384
    # user errors: one line, exit 2
    assert (
        entrypoint(
            [
                "prepare",
                "masks",
                "--scene",
                str(scene.root),
                "--masks",
                "classical",
                "--embedder",
                "labels",
                "--cache",
                str(cache),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err  # one line naming the flag and the only provider it works with
    assert err.count("\n") == 1 and "--embedder labels" in err and "dataset" in err


def test_tabletop_dataset_labels(tabletop_dir, labels, tmp_path):
    """The shared tabletop (cos3d.tabletop) through the dataset provider + labels embedder."""
    from cos3d.readers import load_scene

    scene = load_scene(tabletop_dir)
    frames = scene.frames[:2]
    prov = create_mask_provider("dataset", scene=scene)
    st = prepare_masks(scene, frames, prov, labels, tmp_path / "cache", progress=False)
    assert (st.done, st.skipped) == (2, 0)
    for frame in frames:
        ms, emb = load_view(tmp_path / "cache", frame)
        inst = frame.load_instance()
        objs = ms.at_level("l")
        assert len(objs) > 0 and emb.shape == (len(ms), 384)
        for k in range(len(objs)):
            i = int(objs.source_id[k])
            np.testing.assert_array_equal(objs.masks[k], inst == i)
            assert objs.names[k] == scene.labels[i]
        s = ms.at_level("s")
        for k in np.nonzero(s.is_part)[0]:
            assert s.names[k] == scene.parts[int(s.source_id[k])].names
