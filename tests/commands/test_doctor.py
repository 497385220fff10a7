"""``cos3d doctor``: one table of what is missing, and an exit code that says whether real models are ready.
Without weights it reports each missing one with its flag and exits 1; with tiny random SAM2 + OpenCLIP models
(written with save_pretrained / a local checkpoint, loaded through the real loaders) it runs the real check,
whose random outputs fail it (exit 3); with the check passing it exits 0."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cos3d.cli import entrypoint
from cos3d.commands import doctor


@pytest.fixture
def no_weights(monkeypatch, tmp_path):
    for k in ("COS3D_SAM2_MODEL", "COS3D_SAM3_MODEL", "COS3D_SAM2_CHECKPOINT", "COS3D_CLIP_CHECKPOINT",
              "COS3D_CLIP_MODEL", "COS3D_SIGLIP_MODEL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty hub cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from cos3d.testing.vision import write_tiny_openclip, write_tiny_sam2_hf

    root = tmp_path_factory.mktemp("doctor")
    cfg, ckpt = write_tiny_openclip(root / "clip")
    return ["--sam2-model", str(write_tiny_sam2_hf(root / "sam2")), "--clip-model", str(cfg),
            "--clip-checkpoint", str(ckpt), "--device", "cpu"]


def _rows(out: str) -> dict[tuple[str, str], dict]:
    d = json.loads(out)
    return {(r["group"], r["item"]): r for r in d["rows"]}, d


def test_missing_weights_one_table_exit_1(no_weights, capsys):
    assert entrypoint(["doctor", "--no-check"]) == doctor.MISSING
    out = capsys.readouterr().out
    assert out.count("cos3d doctor") == 1 and "exit 1: not ready" in out
    for item in ("torch", "gsplat", "sam2-hf", "sam3", "openclip", "real models", "hub cache"):
        assert item in out, item
    assert entrypoint(["doctor", "--json"]) == doctor.MISSING
    rows, d = _rows(capsys.readouterr().out)
    assert d["exit_code"] == 1 and d["masks"] is None and d["embedder"] is None
    assert rows[("weights", "sam2-hf")]["status"] == "missing" and "--sam2-model" in rows[("weights", "sam2-hf")]["detail"]
    assert rows[("weights", "openclip")]["status"] == "missing" and "--clip-checkpoint" in rows[("weights", "openclip")]["detail"]
    assert rows[("train", "defaults")]["detail"].startswith("--masks dataset --embedder labels")
    assert not any(g == "check" for g, _ in rows)  # nothing to check without weights
    assert rows[("software", "torch")]["status"] == ("ok" if torch.cuda.is_available() else "warn")


def test_tiny_random_models_run_the_real_check_and_fail_it(no_weights, tiny, capsys):
    code = entrypoint(["doctor", "--json", *tiny])
    rows, d = _rows(capsys.readouterr().out)
    assert rows[("weights", "sam2-hf")]["status"] == "ok" and rows[("weights", "openclip")]["status"] == "ok"
    assert d["masks"] == "sam2-hf" and d["embedder"] == "openclip"
    emb = rows[("check", "openclip")]["detail"]
    # three similarities per bundled photo, from the tiny model's real forward passes
    for photo in ("chelsea", "coffee"):
        part = next(p for p in emb.split("; ") if p.startswith(photo))
        assert len([float(x) for x in part.split()[1:] if x[0] in "-0123456789"]) == 3, part
    assert rows[("check", "sam2-hf")]["detail"].split()[0].isdigit()  # masks counted on coffee.png
    statuses = {rows[("check", k)]["status"] for k in ("openclip", "sam2-hf")}
    assert code == (doctor.CHECK_FAILED if "fail" in statuses else doctor.READY) and d["exit_code"] == code
    assert "fail" in statuses  # random weights do not know cats from coffee


def test_ready_when_the_check_passes(no_weights, tiny, monkeypatch, capsys):
    monkeypatch.setattr(doctor, "embedder_check", lambda e: (True, "cat wins"))
    monkeypatch.setattr(doctor, "sam_check", lambda p: (True, "cup found"))
    assert entrypoint(["doctor", *tiny]) == doctor.READY
    assert "exit 0: ready for real models" in capsys.readouterr().out


def test_embedder_check_ranks_each_photo_text():
    cat = doctor.photo("chelsea")

    class Oracle:  # knows which photo it sees
        def embed_text(self, texts):
            return torch.eye(3)[: len(texts)]

        def embed_image_prompt(self, image, mask, names=None):
            is_cat = image.shape == cat.shape and np.array_equal(image, cat)
            return torch.tensor([1.0, 0.2, 0.0]) if is_cat else torch.tensor([0.0, 0.1, 1.0])

    ok, detail = doctor.embedder_check(Oracle())
    assert ok and "chelsea: cat 1.000 dog 0.200 coffee 0.000" in detail

    class Swapped(Oracle):
        def embed_image_prompt(self, image, mask, names=None):
            return torch.tensor([0.0, 1.0, 0.0])

    assert not doctor.embedder_check(Swapped())[0]
    img = doctor.photo("coffee", 128)
    assert img.dtype == np.uint8 and max(img.shape[:2]) == 128 and img.shape[2] == 3


def test_doctor_on_a_run(no_weights, trained_run, capsys):
    assert entrypoint(["doctor", "--no-check", "--json", "--run", str(trained_run), "--scene", str(trained_run)]) == 1
    rows, _ = _rows(capsys.readouterr().out)
    assert rows[("query", "embedder")]["detail"].startswith("labels") and "oracle-2D" in rows[("query", "embedder")]["detail"]
    assert "offline rule" in rows[("query", "image-prompt segmenter")]["detail"]
    assert ("disk", "2D cache") in rows
