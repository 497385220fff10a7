"""SAM2 and SAM 3 through ``transformers``: tiny randomly initialised models saved with ``save_pretrained``
and loaded through the real ``from_pretrained`` path (no downloads). Their outputs are meaningless; the
tests check shapes, levels, scores, plumbing (registry, ModelsConfig flags, the engine's prompt seam) and
the one-line errors without weights."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from cos3d.cli import entrypoint
from cos3d.core.errors import Cos3dError, MissingWeightsError
from cos3d.vision import create_mask_provider
from cos3d.vision.base import Embedder
from cos3d.vision.masks import mask_iou
from cos3d.vision.image_prompt import ImagePrompt
from cos3d.testing.vision import (
    synthetic_maps,
    write_synthetic_scene,
    write_tiny_sam2_hf,
    write_tiny_sam3,
    write_tiny_sam3_tracker,
)

FAST = dict(device="cpu", points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0)
H, W = 48, 64


class ProbeEmbedder(Embedder):
    """An 8-d embedder that records the image-prompt regions it is given (no model)."""

    name, dim, model_id = "probe", 8, "probe"

    def __init__(self):
        self.regions: list[np.ndarray] = []

    def embed_masks(self, image, masks):
        return np.zeros((len(masks), 8), np.float32)

    def embed_text(self, texts):
        return torch.nn.functional.normalize(torch.ones(len(texts), 8), dim=1)

    def embed_image_prompt(self, image, mask, *, names=None):
        self.regions.append(np.asarray(mask))
        return torch.nn.functional.normalize(torch.ones(8), dim=0)


@pytest.fixture(scope="module")
def sam2_dir(tmp_path_factory):
    return write_tiny_sam2_hf(tmp_path_factory.mktemp("sam2hf"))


@pytest.fixture(scope="module")
def sam3_tracker_dir(tmp_path_factory):
    return write_tiny_sam3_tracker(tmp_path_factory.mktemp("sam3trk"))


@pytest.fixture(scope="module")
def sam3_dir(tmp_path_factory):
    return write_tiny_sam3(tmp_path_factory.mktemp("sam3"))


@pytest.fixture(scope="module")
def sam2_hf(sam2_dir):
    return create_mask_provider("sam2-hf", model=str(sam2_dir), **FAST)


@pytest.fixture()
def no_weight_env(monkeypatch):
    for k in ("COS3D_SAM2_MODEL", "COS3D_SAM3_MODEL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _check_levels(ms, provider):
    assert ms.masks.dtype == bool and ms.masks.shape[1:] == (H, W)
    assert ms.level.dtype == np.int8 and ms.score.dtype == np.float32 and ms.box.shape == (len(ms), 4)
    assert set(ms.level.tolist()) <= {0, 1, 2} and len(ms) > 0
    assert ms.names is None and (ms.source_id == -1).all()
    assert ((ms.score >= 0) & (ms.score <= 1)).all() and ms.area.min() > 0
    for lv in range(3):  # NMS within each level
        sub = ms.masks[ms.level == lv]
        assert (mask_iou(sub, sub) - np.eye(len(sub)) <= provider.nms_thresh + 1e-9).all()


def test_sam2_hf_automatic_masks_levels(sam2_hf):
    image, _, _ = synthetic_maps(W, H)
    ms = sam2_hf.generate(image)
    _check_levels(ms, sam2_hf)
    assert set(ms.level.tolist()) == {0, 1, 2}  # the three multimask outputs kept apart
    assert sam2_hf.name == "sam2-hf"
    assert sam2_hf.model_id.startswith("sam2-hf:local-") and sam2_hf.model_id.endswith("@64")
    assert sam2_hf.params["points_per_side"] == 3
    # deterministic: the same image gives the same masks (the cached embeddings are reused)
    again = sam2_hf.generate(image)
    assert np.array_equal(again.masks, ms.masks) and np.allclose(again.score, ms.score)


def test_sam2_hf_upsamples_only_what_passes_the_iou_filter(sam2_dir, monkeypatch):
    """The predicted-IoU filter runs on the decoder's low-resolution output: the masks come out exactly as when
    every candidate is upsampled first and filtered after (the reference below, the processor's own
    post-processing of the whole batch), and only the candidates that pass are upsampled."""
    from cos3d.vision.sam2_masks import _grid, keep_per_level, levels_to_maskset

    image, _, _ = synthetic_maps(W, H)
    prov = create_mask_provider("sam2-hf", model=str(sam2_dir), device="cpu", points_per_side=4,
                                points_per_batch=5, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    enc = prov._encode(image)
    pts = _grid(4, W, H)
    ious = torch.cat([prov._decode(enc, points=[[p.tolist()] for p in pts[i:i + 5]], labels=[[1]] * len(pts[i:i + 5]),
                                   multimask=True)[1] for i in range(0, len(pts), 5)])
    prov.pred_iou_thresh = float(ious.median())  # about half of the random tiny model's candidates pass
    # the reference: every candidate upsampled (the processor's post-processing of the batch), then filtered
    ref_levels: list = [[] for _ in range(3)]
    for i in range(0, len(pts), 5):
        b = pts[i:i + 5]
        logits, iou = prov._decode(enc, points=[[p.tolist()] for p in b], labels=[[1]] * len(b), multimask=True)
        keep_per_level(prov, logits, iou, ref_levels)
    ref = levels_to_maskset(ref_levels, H, W, prov.nms_thresh)
    seen = []
    up = prov._upsample
    monkeypatch.setattr(prov, "_upsample", lambda low, hw: (seen.append(len(low)), up(low, hw))[1])
    ms = prov.generate(image)
    assert len(ms) > 0 and np.array_equal(ms.masks, ref.masks) and np.array_equal(ms.level, ref.level)
    assert np.array_equal(ms.score, ref.score)
    passed = int((ious > prov.pred_iou_thresh).sum())
    assert sum(seen) == passed and 0 < passed < ious.numel()


def test_sam2_hf_predictor_box_and_points(sam2_hf):
    from cos3d.vision.prompts import PromptSegmenter, prompt_mask

    image, _, _ = synthetic_maps(W, H)
    seg = sam2_hf.prompt_segmenter()
    assert isinstance(seg, PromptSegmenter)
    m, s = seg.segment(image, box=np.array([5, 5, 30, 30]))
    assert m.shape == (H, W) and m.dtype == bool and isinstance(s, float)
    m2, _ = seg.segment(image, points=np.array([[10, 10], [40, 30]]), point_labels=np.array([1, 0]), box=[5, 5, 30, 30])
    assert m2.shape == (H, W)
    for lv in ("s", "m", "l"):  # one click: three candidates, a level picks one
        assert seg.segment(image, points=np.array([[10.0, 12.0]]), level=lv)[0].shape == (H, W)
    with pytest.raises(Cos3dError, match="points or a box"):
        seg.segment(image)
    # prompt_mask routes a box through the segmenter (or falls back, with a warning, on an empty mask)
    with warnings.catch_warnings():  # a random model may return an empty mask: then the offline rule, warned
        warnings.simplefilter("ignore")
        region = prompt_mask(image, ImagePrompt(box=[5, 5, 30, 30]), segmenter=seg)
    assert region.shape == (H, W) and region.any()
    if m.any():
        assert np.array_equal(region, m)
    with pytest.raises(TypeError, match="PromptSegmenter"):
        prompt_mask(image, ImagePrompt(box=[5, 5, 30, 30]), segmenter=object())


def test_sam3_tracker_provider_and_predictor(sam3_tracker_dir):
    p = create_mask_provider("sam3", model=str(sam3_tracker_dir), **FAST)
    assert p.name == "sam3" and p.model_id.startswith("sam3-hf:local-")
    image, _, _ = synthetic_maps(W, H)
    _check_levels(p.generate(image), p)
    from cos3d.vision.registry import create_prompt_segmenter

    seg = create_prompt_segmenter("sam3", model=str(sam3_tracker_dir), device="cpu")
    m, s = seg.segment(image, box=[5, 5, 30, 30])
    assert m.shape == (H, W) and m.dtype == bool and np.isfinite(s)


def test_sam3_concepts_text_exemplar_presence(sam3_dir):
    from cos3d.vision.sam3 import ConceptMasks, SAM3ConceptSegmenter

    image, _, _ = synthetic_maps(W, H)
    seg = SAM3ConceptSegmenter(str(sam3_dir), device="cpu", score_thresh=0.0)
    assert seg.model_id.startswith("sam3-concepts:local-")
    r = seg.segment(image, "red mug")
    assert isinstance(r, ConceptMasks) and r.prompt == "red mug" and r.present
    k = len(r)
    assert r.masks.shape == (k, H, W) and r.masks.dtype == bool and r.scores.shape == (k,) and r.boxes.shape == (k, 4)
    assert 0.0 <= r.presence <= 1.0 and (r.scores <= r.presence + 1e-6).all()  # score = instance × presence
    assert (np.diff(r.scores) <= 1e-7).all()  # best first
    ms = r.to_mask_set("l")
    assert len(ms) == k and (ms.level == 2).all() and r.union().shape == (H, W)
    ex = seg.segment(image, exemplars=[[5, 5, 30, 30], [40, 10, 60, 40]], exemplar_labels=[1, 0])
    assert ex.prompt == "visual" and ex.masks.shape[1:] == (H, W)
    # an absent concept is an empty answer, not a forced guess
    strict = SAM3ConceptSegmenter(seg.model, processor=seg.processor, device="cpu", score_thresh=0.99)
    none = strict.segment(image, "red mug")
    assert not none.present and none.masks.shape == (0, H, W) and none.union().shape == (H, W)
    with pytest.raises(Cos3dError, match="needs a text"):
        seg.segment(image)
    with pytest.raises(Cos3dError, match="exemplar_labels"):
        seg.segment(image, "mug", exemplars=[[5, 5, 30, 30]], exemplar_labels=[2])


def test_wrong_model_kind_and_missing_weights(sam2_dir, sam3_dir, no_weight_env, tmp_path):
    from cos3d.vision.sam3 import SAM3ConceptSegmenter

    with pytest.raises(Cos3dError, match=r"holds a 'sam2' model, not SAM 3.*--sam3-model"):
        SAM3ConceptSegmenter(str(sam2_dir), device="cpu")
    with pytest.raises(Cos3dError, match=r"holds a 'sam3' model, not SAM2.*--sam2-model"):
        create_mask_provider("sam2-hf", model=str(sam3_dir), device="cpu")
    # a SAM 3 folder without the tracker's weights (this tiny one holds the detector only): loud, not half-random
    with pytest.raises(Cos3dError, match=r"lacks \d+ of the SAM 3 tracker weights.*--sam3-model"):
        create_mask_provider("sam3", model=str(sam3_dir), device="cpu")
    for name, flag, env in (
        ("sam2-hf", "--sam2-model", "COS3D_SAM2_MODEL"),
        ("sam3", "--sam3-model", "COS3D_SAM3_MODEL"),
    ):
        with pytest.raises(MissingWeightsError) as e:
            create_mask_provider(name, device="cpu")  # the hub default, offline
        msg = str(e.value)
        assert flag in msg and env in msg and "--masks dataset" in msg and "\n" not in msg
        with pytest.raises(MissingWeightsError, match=f"does not exist.*{flag}"):
            create_mask_provider(name, model=str(tmp_path / "nope"), device="cpu")
    with pytest.raises(MissingWeightsError, match="--sam3-model"):
        SAM3ConceptSegmenter(device="cpu")


def test_registry_models_config_and_cli_flags(sam2_dir, capsys, tmp_path, no_weight_env):
    from cos3d.vision.models import ModelsConfig
    from cos3d.vision.registry import list_mask_providers, list_prompt_segmenters
    from cos3d.vision.sam2_hf import HFSamPromptSegmenter

    assert {"sam2-hf", "sam3", "sam2"} <= set(list_mask_providers())
    assert {"sam2-hf", "sam3", "sam2"} <= set(list_prompt_segmenters())
    cfg = ModelsConfig(masks="sam2-hf", embedder="siglip", sam2_model=str(sam2_dir), points_per_side=2)
    cfg.validate()
    prov = cfg.create_provider(scene=None, device="cpu")
    assert prov.name == "sam2-hf" and prov.points_per_side == 2
    assert isinstance(cfg.create_prompt_segmenter(device="cpu"), HFSamPromptSegmenter)
    assert ModelsConfig().create_prompt_segmenter() is None  # dataset masks: the offline rules
    for cmd in (["prepare", "masks"], ["train"]):
        with pytest.raises(SystemExit):
            entrypoint([*cmd, "--help"])
        out = capsys.readouterr().out
        assert "--sam2-model" in out and "--sam3-model" in out and "sam2-hf" in out
    # without weights, the CLI prints one line naming the flag and exits 2
    scene = write_synthetic_scene(tmp_path / "s", n_frames=1)
    code = entrypoint(["prepare", "masks", "--scene", str(scene.root), "--cache", str(tmp_path / "c"),
                       "--masks", "sam3", "--embedder", "siglip"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--sam3-model" in err, err


def test_engine_routes_image_prompts_through_the_segmenter(sam2_hf, tmp_path):
    """The engine's seam: with a segmenter, the region of an image prompt is the segmenter's mask."""
    from cos3d.data.gaussians import Gaussians
    from cos3d.query.engine import QueryEngine, QueryInputs
    from cos3d.field.level import LevelField
    class Recorder:
        def __init__(self, inner):
            self.inner, self.calls = inner, []

        def segment(self, image, *, points=None, point_labels=None, box=None, level=None):
            m, s = self.inner.segment(image, points=points, point_labels=point_labels, box=box, level=level)
            m = m.copy()
            m[H // 2, W // 2] = True  # never empty: no fallback to the offline rule
            self.calls.append((None if box is None else list(box), m))
            return m, s

    scene = write_synthetic_scene(tmp_path / "s", n_frames=1, width=W, height=H)
    n = 20
    g = Gaussians.from_points(torch.rand(n, 3), torch.rand(n, 3), scales=0.01, opacity=0.9, sh_degree=0)
    fld = LevelField(instance=torch.randn(n, 16), language=torch.randn(n, 8).half(), anchors=torch.zeros(0, 16),
                     targets=torch.randn(2, 8), dbar=0.05)
    rec, emb = Recorder(sam2_hf.prompt_segmenter()), ProbeEmbedder()
    engine = QueryEngine(QueryInputs(scene=scene, gaussians=g, fields={"l": fld}, embedder=emb), segmenter=rec)
    image = scene.frames[0].load_image()
    e, _ = engine.embed_image(image, ImagePrompt(box=[5, 5, 30, 30]))
    assert e.shape == (8,) and len(rec.calls) == 1 and rec.calls[0][0] == [5, 5, 30, 30]
    assert np.array_equal(emb.regions[-1], rec.calls[0][1])
    # without a segmenter the box stays a rectangle (offline rule)
    plain = QueryEngine(QueryInputs(scene=scene, gaussians=g, fields={"l": fld}, embedder=emb))
    plain.embed_image(image, ImagePrompt(box=[5, 5, 30, 30]))
    assert emb.regions[-1].sum() == 25 * 25


def test_concept_2d_first_branch_oracle_and_tiny_sam3(sam3_dir, tmp_path):
    """The 2D-first branch: concept masks in a view lifted through its blending weights. An oracle segmenter
    (the view's instance map, standing in for SAM 3) selects the mug's Gaussians; the tiny SAM 3 runs the same
    path through the real loader; an absent concept gives an empty answer in every fusion mode."""
    from cos3d.data.gaussians import Gaussians
    from cos3d.query.concept2d import concept_votes, fuse, pick_views
    from cos3d.query.engine import QueryEngine, QueryInputs
    from cos3d.field.level import LevelField
    from cos3d.vision.sam3 import ConceptMasks, SAM3ConceptSegmenter

    scene = write_synthetic_scene(tmp_path / "s", n_frames=1, width=W, height=H)
    frame = scene.frames[0]
    inst = frame.load_instance()
    ys, xs = np.mgrid[0:H:2, 0:W:2]
    depth = np.zeros((H, W))
    depth[ys, xs] = 1.0
    pts = frame.camera.backproject(depth)[depth > 0]
    ids = inst[depth > 0]
    g = Gaussians.from_points(torch.from_numpy(pts).float(), torch.full((len(pts), 3), 0.5), scales=0.012,
                              opacity=0.95, sh_degree=0)
    n = g.num
    fld = LevelField(instance=torch.randn(n, 16), language=torch.randn(n, 8).half(), anchors=torch.zeros(0, 16),
                     targets=torch.randn(2, 8), dbar=0.05)
    engine = QueryEngine(QueryInputs(scene=scene, gaussians=g, fields={"l": fld}, embedder=ProbeEmbedder()))

    class Oracle:  # ground truth stands in for SAM 3 here (test only; the query path reads none)
        def segment(self, image, text=None, *, exemplars=None, exemplar_labels=None):
            m = (inst == 1)[None] if text == "mug" else np.zeros((0, H, W), bool)
            return ConceptMasks(masks=m, scores=np.ones(len(m), np.float32), boxes=np.zeros((len(m), 4), np.float32),
                                presence=float(len(m) > 0), prompt=text)

    assert pick_views(engine, 4) == ["0"]
    cv = concept_votes(engine, Oracle(), "mug", views=["0"])
    assert cv.present and cv.votes.shape == (n,) and cv.instances == {"0": 1}
    sel = set(cv.selected().tolist())
    gt = set(np.nonzero(ids == 1)[0].tolist())
    assert len(sel & gt) / len(sel | gt) > 0.8
    everything = torch.arange(n)
    assert set(fuse(everything, cv, "and").tolist()) == sel and set(fuse(everything, cv, "2d").tolist()) == sel
    assert len(fuse(torch.tensor([0]), cv, "or")) >= len(sel)
    absent = concept_votes(engine, Oracle(), "giraffe", views=["0"])
    assert not absent.present and all(len(fuse(everything, absent, m)) == 0 for m in ("and", "or", "2d"))
    assert pick_views(engine, 1, focus=torch.tensor(sorted(gt))) == ["0"]
    # the tiny random SAM 3 through the real loader: the same path, shapes only
    real = concept_votes(engine, SAM3ConceptSegmenter(str(sam3_dir), device="cpu", score_thresh=0.0), "mug", k=1)
    assert real.votes.shape == (n,) and 0.0 <= real.presence["0"] <= 1.0 and real.present
    assert float(real.votes.min()) >= 0.0 and float(real.votes.max()) <= 1.0 + 1e-6
