"""The offline ``labels`` embedder (bundled all-MiniLM-L6-v2) and prompt embeddings in its space."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cos3d.core.errors import Cos3dError
from cos3d.vision import MaskSet, create_embedder, create_mask_provider
from cos3d.vision.prompts import combine_embeddings, embed_image_prompt
from cos3d.testing.vision import write_synthetic_scene
from cos3d.vision.image_prompt import ImagePrompt


@pytest.fixture(scope="module")
def labels():
    return create_embedder("labels")


def test_text_geometry_and_cache(labels):
    assert labels.dim == 384 and labels.model_id == "labels:all-MiniLM-L6-v2"
    t = labels.embed_text(["mug", "red coffee mug", "soccer ball"])
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and tuple(t.shape) == (3, 384)
    torch.testing.assert_close(t.norm(dim=1), torch.ones(3))
    assert float(t[0] @ t[1]) > float(t[0] @ t[2])
    n = len(labels._cache)
    labels.embed_text(["mug", "soccer ball"])
    assert len(labels._cache) == n  # re-encoding is served from the in-process cache
    assert tuple(labels.embed_text([]).shape) == (0, 384)


def test_mask_embedding_is_mean_of_names(labels, tmp_path):
    scene = write_synthetic_scene(tmp_path / "s", n_frames=1)
    frame = scene.frames[0]
    image = frame.load_image()
    ms = create_mask_provider("dataset", scene=scene).generate(image, frame)
    emb = labels.embed_masks(image, ms)
    assert emb.dtype == np.float32 and emb.shape == (len(ms), 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    k = int(np.nonzero((ms.source_id == 1) & (ms.level == 2))[0][0])  # the mug, level l
    names = ms.names[k]
    mean = labels.embed_text(names).numpy().mean(0)
    np.testing.assert_allclose(emb[k], mean / np.linalg.norm(mean), atol=1e-5)
    q = labels.embed_text(["mug"]).numpy()[0]
    sims = emb[ms.level == 2] @ q
    assert int(ms.source_id[ms.level == 2][np.argmax(sims)]) == 1


def test_labels_needs_names(labels):
    ms = MaskSet.from_masks(np.ones((1, 4, 4), bool), "l")
    with pytest.raises(Cos3dError, match="dataset mask provider"):
        labels.embed_masks(np.zeros((4, 4, 3), np.uint8), ms)
    bad = MaskSet.from_masks(np.ones((1, 4, 4), bool), "l", names=[[]], source_id=np.array([7]))
    with pytest.raises(Cos3dError, match=r"\[7\] have no names"):
        labels.embed_masks(np.zeros((4, 4, 3), np.uint8), bad)


def test_image_prompt_for_labels_needs_names(labels):
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(Cos3dError, match="names hint"):
        embed_image_prompt(labels, image, ImagePrompt(box=[1, 1, 5, 5]))
    e = embed_image_prompt(labels, image, ImagePrompt(box=[1, 1, 5, 5]), names=["mug", "cup"])
    assert tuple(e.shape) == (384,) and abs(float(e.norm()) - 1) < 1e-5
    combined = combine_embeddings([labels.embed_text(["red"])[0], e])
    assert abs(float(combined.norm()) - 1) < 1e-5


def test_embed_region_names_the_object_under_the_prompt(labels, tmp_path):
    """Oracle-2D: a scene frame (by path or by pixels) resolves to the object/part of best IoU."""
    from cos3d.vision.base import ImageRegion

    scene = write_synthetic_scene(tmp_path / "s", n_frames=2)
    frame = scene.frames[1]
    image = frame.load_image()
    inst, part = frame.load_instance(), frame.load_part()
    box = np.zeros(inst.shape, bool)
    ys, xs = np.nonzero(inst == 1)  # the mug's box: covers the mug and some background
    box[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
    by_pixels, note = labels.embed_region(ImageRegion(image=image, mask=box, scene=scene))
    torch.testing.assert_close(by_pixels, torch.from_numpy(labels.embed_names(scene.names_of(1))))
    assert note == f"oracle-2D: frame {frame.name}, object 1 ({scene.names_of(1)[0]})"
    by_path, _ = labels.embed_region(ImageRegion(image=image, mask=box, path=frame.image_path, scene=scene))
    torch.testing.assert_close(by_path, by_pixels)
    handle, note = labels.embed_region(ImageRegion(image=image, mask=part == 11, scene=scene, part=True))
    torch.testing.assert_close(handle, torch.from_numpy(labels.embed_names(scene.parts[11].names)))
    assert "object 11 (handle)" in note
    with pytest.raises(Cos3dError, match="real CLIP"):
        labels.embed_region(ImageRegion(image=np.zeros_like(image), mask=box, scene=scene))
    with pytest.raises(Cos3dError, match="real CLIP"):
        labels.embed_region(ImageRegion(image=image, mask=box))  # no scene to name it from
    with pytest.raises(Cos3dError, match="covers no labelled object"):
        labels.embed_region(ImageRegion(image=image, mask=inst == 0, scene=scene))  # background only


def test_plain_torch_minilm_matches_sentence_transformers(labels):
    """The labels embedder runs the shipped MiniLM in plain torch (cos3d.vision.minilm, for a fast process
    start); sentence-transformers on the same folder is the reference."""
    from sentence_transformers import SentenceTransformer

    from cos3d.vision.minilm import MiniLMEncoder

    assert isinstance(labels.model, MiniLMEncoder)
    texts = ["red mug", "a", "", "Something to drink TEA from!", "the handle of the mug", "Çafé crème brûlée 日本語",
             "word " * 300, "x" * 60, "soda can", "the robot's head"]
    ours = labels.model.encode(texts)
    ref = SentenceTransformer(str(labels.model_dir), device="cpu").encode(texts, convert_to_numpy=True,
                                                                          normalize_embeddings=True)
    assert ours.shape == ref.shape == (len(texts), 384)
    assert np.abs(ours - ref).max() < 1e-5
    tok = SentenceTransformer(str(labels.model_dir), device="cpu").tokenizer
    assert [labels.model.token_count(t) for t in texts] == [len(tok(t)["input_ids"]) for t in texts]
