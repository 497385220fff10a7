"""SAM2, OpenCLIP and SigLIP through their real loaders, with randomly initialised weights saved to
temporary checkpoints (no downloads); missing weights; and one check with real CLIP weights when
configured (``COS3D_CLIP_CHECKPOINT``)."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

from cos3d.cli import entrypoint
from cos3d.core.errors import Cos3dError, MissingWeightsError
from cos3d.vision import create_embedder, create_mask_provider, load_view, prepare_masks
from cos3d.vision.image_prompt import ImagePrompt
from cos3d.testing.vision import (
    synthetic_maps,
    write_random_sam2_checkpoint,
    write_random_siglip,
    write_synthetic_scene,
    write_tiny_openclip,
)

SAM2_FAST = dict(device="cpu", points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0, image_size=256)


@pytest.fixture(scope="module")
def sam2_ckpt(tmp_path_factory):
    # the official file name lets the loader infer configs/sam2.1/sam2.1_hiera_t.yaml
    return write_random_sam2_checkpoint(tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny.pt")


@pytest.fixture(scope="module")
def sam2(sam2_ckpt):
    return create_mask_provider("sam2", checkpoint=sam2_ckpt, config="configs/sam2.1/sam2.1_hiera_t.yaml", **SAM2_FAST)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return write_tiny_openclip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def clip(tiny_clip):
    cfg, ckpt = tiny_clip
    return create_embedder("openclip", model=str(cfg), checkpoint=ckpt, device="cpu")


@pytest.fixture()
def no_weight_env(monkeypatch):
    for k in (
        "COS3D_SAM2_CHECKPOINT",
        "COS3D_SAM2_CONFIG",
        "COS3D_CLIP_CHECKPOINT",
        "COS3D_CLIP_MODEL",
        "COS3D_SIGLIP_MODEL",
    ):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_sam2_random_checkpoint_levels_shapes(sam2):
    image, _, _ = synthetic_maps(96, 64)
    ms = sam2.generate(image)
    assert ms.masks.dtype == bool and ms.masks.shape[1:] == (64, 96)
    assert ms.level.dtype == np.int8 and ms.score.dtype == np.float32 and ms.box.shape == (len(ms), 4)
    assert set(ms.level.tolist()) == {0, 1, 2}  # the three multimask outputs kept apart
    assert ms.names is None and (ms.source_id == -1).all()
    assert ((ms.score >= 0) & (ms.score <= 1)).all()
    assert ms.area.min() > 0
    # NMS within each level: no two kept masks of one level overlap above the threshold
    from cos3d.vision.masks import mask_iou

    for lv in range(3):
        sub = ms.masks[ms.level == lv]
        iou = mask_iou(sub, sub) - np.eye(len(sub))
        assert (iou <= sam2.nms_thresh + 1e-9).all()
    assert sam2.model_id.startswith("sam2:sam2.1_hiera_t@256:ckpt-")


def test_sam2_config_inferred_and_mismatch(sam2_ckpt, tmp_path, no_weight_env):
    p = create_mask_provider("sam2", checkpoint=sam2_ckpt, **SAM2_FAST)  # config from the file name
    assert "sam2.1_hiera_t" in p.model_id
    other = tmp_path / "renamed.pt"
    other.write_bytes(sam2_ckpt.read_bytes())
    with pytest.raises(Cos3dError, match="--sam2-config"):
        create_mask_provider("sam2", checkpoint=other, **SAM2_FAST)
    with pytest.raises(Cos3dError, match="does not fit config sam2.1_hiera_s"):
        create_mask_provider("sam2", checkpoint=other, config="sam2.1_hiera_s", **SAM2_FAST)
    with pytest.raises(Cos3dError, match="not found"):
        create_mask_provider("sam2", checkpoint=other, config="sam9_hiera_q", **SAM2_FAST)


def test_missing_weights_errors_name_flag_env_and_offline_alternative(no_weight_env, capsys, tmp_path):
    with pytest.raises(MissingWeightsError) as e:
        create_mask_provider("sam2", device="cpu")
    msg = str(e.value)
    assert "--sam2-checkpoint" in msg and "COS3D_SAM2_CHECKPOINT" in msg and "--masks dataset" in msg
    with pytest.raises(MissingWeightsError) as e:
        create_embedder("openclip", device="cpu")
    msg = str(e.value)
    assert "--clip-checkpoint" in msg and "COS3D_CLIP_CHECKPOINT" in msg and "--embedder labels" in msg
    with pytest.raises(MissingWeightsError, match="--siglip-model.*--embedder labels"):
        create_embedder("siglip", device="cpu")
    with pytest.raises(MissingWeightsError, match="does not exist"):
        create_embedder("openclip", checkpoint=tmp_path / "nope.pt", device="cpu")
    with pytest.raises(MissingWeightsError, match="refusing to run a randomly initialised"):
        create_embedder("openclip", pretrained=None, device="cpu")
    # through the CLI: one line on stderr, exit status 2
    scene = write_synthetic_scene(tmp_path / "s", n_frames=1)
    assert entrypoint(["prepare", "masks", "--scene", str(scene.root), "--cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cos3d prepare: error:") and "--sam2-checkpoint" in err and len(err.splitlines()) == 1


def test_openclip_random_checkpoint(clip, tiny_clip, monkeypatch):
    image, inst, _ = synthetic_maps(96, 64)
    from cos3d.vision import MaskSet

    ms = MaskSet.from_masks(np.stack([inst == 1, inst == 2, inst == 3]), "l")
    emb = clip.embed_masks(image, ms)
    assert emb.dtype == np.float32 and emb.shape == (3, clip.dim) and clip.dim == 64
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    t = clip.embed_text(["a mug", "a ball"])
    assert t.dtype == torch.float32 and tuple(t.shape) == (2, 64)
    torch.testing.assert_close(t.norm(dim=1), torch.ones(2))
    # an image prompt with the same mask is the same embedding (same crop, same space)
    p = clip.embed_image_prompt(image, inst == 2)
    np.testing.assert_allclose(p.numpy(), emb[1], atol=1e-5)
    # an image embedder embeds a prompt region's pixels, whatever the scene (no note)
    from cos3d.vision.base import ImageRegion

    region, note = clip.embed_region(ImageRegion(image=image, mask=inst == 2, part=True))
    assert note == "" and region.dtype == torch.float32
    torch.testing.assert_close(region, p)
    assert clip.embed_masks(image, MaskSet.empty(64, 96)).shape == (0, 64)
    assert clip.model_id.startswith("openclip:cos3d-test-tiny-clip:ckpt-")
    # the env var is the same path as --clip-checkpoint
    cfg, ckpt = tiny_clip
    monkeypatch.setenv("COS3D_CLIP_CHECKPOINT", str(ckpt))
    assert create_embedder("openclip", model=str(cfg), device="cpu").model_id == clip.model_id
    with pytest.raises(Cos3dError, match="unknown OpenCLIP architecture"):
        create_embedder("openclip", model="ViT-Q-99", checkpoint=ckpt, device="cpu")


def test_siglip_random_folder(tmp_path):
    folder = write_random_siglip(tmp_path / "siglip")
    emb = create_embedder("siglip", model=str(folder), device="cpu")
    image, inst, _ = synthetic_maps(96, 64)
    from cos3d.vision import MaskSet

    e = emb.embed_masks(image, MaskSet.from_masks(np.stack([inst == 1, inst == 3]), "l"))
    assert e.dtype == np.float32 and e.shape == (2, emb.dim)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    t = emb.embed_text(["a duck"])
    assert tuple(t.shape) == (1, emb.dim) and abs(float(t.norm()) - 1) < 1e-5
    assert emb.model_id.startswith("siglip:local-")


def test_sam2_openclip_cache_and_cli(sam2_ckpt, tiny_clip, clip, sam2, tmp_path, capsys):
    scene = write_synthetic_scene(tmp_path / "scene", n_frames=2)
    cache = tmp_path / "cache"
    st = prepare_masks(scene, None, sam2, clip, cache, progress=False)
    assert (st.done, st.skipped) == (2, 0)
    ms, emb = load_view(cache, "0")
    assert emb.dtype == np.float16 and emb.shape == (len(ms), 64) and len(ms) > 0
    assert set(ms.level.tolist()) <= {0, 1, 2}
    # the CLI with the same models/settings finds every view cached
    cfg, ckpt = tiny_clip
    argv = [
        "prepare",
        "masks",
        "--scene",
        str(scene.root),
        "--masks",
        "sam2",
        "--embedder",
        "openclip",
        "--cache",
        str(cache),
        "--sam2-checkpoint",
        str(sam2_ckpt),
        "--sam2-config",
        "sam2.1_hiera_t",
        "--points-per-side",
        "3",
        "--pred-iou-thresh",
        "0",
        "--stability-thresh",
        "0",
        "--sam2-image-size",
        "256",
        "--clip-model",
        str(cfg),
        "--clip-checkpoint",
        str(ckpt),
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert entrypoint(argv) == 0
    assert "0 views done, 2 skipped" in capsys.readouterr().out
    # a different SAM2 setting is a miss
    old = sam2.points_per_side
    try:
        sam2.points_per_side = 2
        st = prepare_masks(scene, [scene.frames[1]], sam2, clip, cache, progress=False)
    finally:
        sam2.points_per_side = old
    assert (st.done, st.skipped) == (1, 0)


def test_sam2_prompt_segmenter(sam2):
    from cos3d.vision.prompts import prompt_mask

    image, inst, _ = synthetic_maps(96, 64)
    seg = sam2.prompt_segmenter()
    m, iou = seg.segment(image, points=np.array([[60.0, 28.0]]), point_labels=np.array([1]))
    assert m.dtype == bool and m.shape == (64, 96) and isinstance(iou, float)
    # through prompt_mask: whatever the random model returns, the result is a usable non-empty mask
    # (an empty SAM2 answer falls back to the offline rule with a warning)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = prompt_mask(image, ImagePrompt(box=[40, 10, 80, 50]), segmenter=seg)
    assert out.shape == (64, 96) and out.any()


@pytest.mark.weights
@pytest.mark.skipif(
    not os.environ.get("COS3D_CLIP_CHECKPOINT"),
    reason="real OpenCLIP weights not configured (set COS3D_CLIP_CHECKPOINT[, COS3D_CLIP_MODEL])",
)
def test_real_clip_sees_a_cat():
    from skimage import data

    emb = create_embedder("openclip")
    cat = data.chelsea()
    full = np.ones(cat.shape[:2], bool)
    img = emb.embed_image_prompt(cat, full)
    t = emb.embed_text(["a photo of a cat", "a photo of a dog"])
    s = t @ img
    assert float(s[0]) > float(s[1])
