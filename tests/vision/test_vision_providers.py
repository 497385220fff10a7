"""The offline mask providers (dataset, classical) and the registry."""

from __future__ import annotations

import numpy as np
import pytest

from cos3d.core.errors import Cos3dError
from cos3d.vision import create_embedder, create_mask_provider, list_embedders, list_mask_providers
from cos3d.vision.classical_masks import region_around
from cos3d.testing.vision import SYNTHETIC_LABELS, SYNTHETIC_PARTS, write_synthetic_scene


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_synthetic_scene(tmp_path_factory.mktemp("vision_scene") / "scene", n_frames=3, width=96, height=64)


def test_registry_names_and_unknown():
    assert list_mask_providers() == ["sam2", "sam2-hf", "sam3", "dataset", "classical"]
    assert list_embedders() == ["openclip", "siglip", "labels", "labels-gap"]
    with pytest.raises(Cos3dError, match="unknown mask provider 'sam9'.*sam2, sam2-hf, sam3, dataset, classical"):
        create_mask_provider("sam9")
    with pytest.raises(Cos3dError, match="unknown embedder"):
        create_embedder("clip")


def test_dataset_masks_equal_instance_regions_with_names(scene):
    prov = create_mask_provider("dataset", scene=scene)
    frame = scene.frames[1]
    image = frame.load_image()
    ms = prov.generate(image, frame)
    inst, part = frame.load_instance(), frame.load_part()
    assert ms.masks.dtype == bool and ms.masks.shape[1:] == image.shape[:2]
    assert ms.level.dtype == np.int8 and ms.score.dtype == np.float32 and ms.box.dtype == np.float32
    assert ms.source_id.dtype == np.int64
    # level l (and m): one mask per instance, exactly its region, named by labels.json
    for lv in ("l", "m"):
        sub = ms.at_level(lv)
        assert sorted(sub.source_id.tolist()) == [1, 2, 3]
        for k in range(len(sub)):
            i = int(sub.source_id[k])
            np.testing.assert_array_equal(sub.masks[k], inst == i)
            assert sub.names[k] == SYNTHETIC_LABELS[i]
            assert not sub.is_part[k]
    # level s: the mug's parts (named by parts.json), the other objects whole
    s = ms.at_level("s")
    got = {(int(i), bool(p)) for i, p in zip(s.source_id, s.is_part)}
    assert got == {(11, True), (12, True), (2, False), (3, False)}
    for k in range(len(s)):
        i = int(s.source_id[k])
        if s.is_part[k]:
            np.testing.assert_array_equal(s.masks[k], part == i)
            assert s.names[k] == SYNTHETIC_PARTS[i][0]
        else:
            np.testing.assert_array_equal(s.masks[k], inst == i)
    # label map of level l reproduces the instance map (ids via source_id)
    lm = ms.label_map("l")
    ids = np.where(lm > 0, ms.source_id[np.maximum(lm - 1, 0)], 0)
    np.testing.assert_array_equal(ids, inst)
    with pytest.raises(Cos3dError, match="frame="):
        prov.generate(image)


def test_dataset_perturbation_is_seeded(scene):
    frame = scene.frames[0]
    image = frame.load_image()
    exact = create_mask_provider("dataset", scene=scene).generate(image, frame)

    def run(seed, strength=0.8, f=frame):
        return create_mask_provider("dataset", scene=scene, perturb=strength, seed=seed).generate(f.load_image(), f)

    a, b, c = run(1), run(1), run(2)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert a.names == b.names and a.source_id.tolist() == b.source_id.tolist()
    assert a.masks.shape != c.masks.shape or not np.array_equal(a.masks, c.masks)
    assert a.masks.shape != exact.masks.shape or not np.array_equal(a.masks, exact.masks)
    # every perturbed mask still carries names and a dataset id
    assert all(a.names) and (a.source_id > 0).all()
    # strength 0 is the exact maps; params (cache keys) record strength and seed
    zero = create_mask_provider("dataset", scene=scene, perturb=0.0, seed=5)
    np.testing.assert_array_equal(zero.generate(image, frame).masks, exact.masks)
    assert (
        create_mask_provider("dataset", scene=scene, perturb=0.3, seed=1).params
        != create_mask_provider("dataset", scene=scene, perturb=0.3, seed=2).params
    )
    with pytest.raises(Cos3dError, match=r"\[0, 1\]"):
        create_mask_provider("dataset", scene=scene, perturb=1.5)


def test_classical_masks_levels_and_prompt_region(scene):
    prov = create_mask_provider("classical")
    image = scene.frames[0].load_image()
    ms = prov.generate(image)
    assert ms.masks.dtype == bool and ms.masks.shape[1:] == image.shape[:2]
    assert set(ms.level.tolist()) == {0, 1, 2}
    assert ms.names is None and (ms.source_id == -1).all()
    assert ((ms.score > 0) & (ms.score <= 1)).all()
    # the flat-coloured ball is found as one region at the small level
    ball = scene.frames[0].load_instance() == 2
    best = max(ms.at_level("s").masks, key=lambda m: (m & ball).sum() / (m | ball).sum())
    assert (best & ball).sum() / (best | ball).sum() > 0.8
    # a click inside the ball grows to the ball
    ys, xs = np.nonzero(ball)
    seeds = np.zeros_like(ball)
    seeds[int(ys.mean()), int(xs.mean())] = True
    reg = region_around(image, seeds)
    assert (reg & ball).sum() / (reg | ball).sum() > 0.8
    with pytest.raises(Cos3dError, match="superpixel method"):
        create_mask_provider("classical", method="watershed")
