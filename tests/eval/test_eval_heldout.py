"""A prompt used for evaluation can never reach calibration or training (issue 11), and
``cos3d eval tabletop`` end to end on the shared trained tabletop."""

from __future__ import annotations

import json
import shutil

import pytest

from cos3d.core.errors import Cos3dError
from cos3d.eval.heldout import ABSENT_PART_PROMPTS
from cos3d.eval.tabletop import HELD_OUT_KINDS, tabletop_queries

pytest.importorskip("pybullet")


def _record_encodes(monkeypatch) -> list[str]:
    """Every text the labels embedder is asked to encode from now on (cache hits included)."""
    from cos3d.vision.labels_embedder import LabelsEmbedder

    seen: list[str] = []
    orig = LabelsEmbedder.encode

    def encode(self, texts):
        seen.extend(texts)
        return orig(self, texts)

    monkeypatch.setattr(LabelsEmbedder, "encode", encode)
    return seen


def test_evaluation_prompts_never_reach_training_or_calibration(tabletop_dir, trained_run, tmp_path, monkeypatch):
    import cos3d
    from cos3d.readers import load_scene
    from cos3d.vision import prepare_masks
    from cos3d.vision.models import ModelsConfig

    scene = load_scene(tabletop_dir)
    qs = tabletop_queries(scene)
    held = {q.text.lower() for q in qs if q.kind in HELD_OUT_KINDS}
    assert {"paraphrase", "absent", "plural"} <= {q.kind for q in qs}
    assert held
    if scene.parts:  # absent parts are asked within the parent that has parts, and are held out too
        absent_parts = [q for q in qs if q.kind == "absent_part"]
        parent = {scene.labels[int(p.parent)][0] for p in scene.parts.values()}
        assert {q.text for q in absent_parts} == set(ABSENT_PART_PROMPTS)
        assert {q.within for q in absent_parts} == parent and not any(q.present for q in absent_parts)

    seen = _record_encodes(monkeypatch)
    # training: the masks stage embeds every training view's masks (a fresh cache: nothing is skipped)
    models = ModelsConfig(masks="dataset", embedder="labels")
    prepare_masks(scene, scene.split("train"), models.create_provider(scene), models.create_embedder(),
                  tmp_path / "cache", progress=False)
    trained = {t.lower() for t in seen}
    assert trained, "the recording saw no training text"
    # calibration: an engine that calibrates every level itself (canonical negatives + the negative
    # vocabulary; ts.engine would adopt the calibration saved in the run folder, computed the same way)
    from cos3d.query.engine import QueryEngine

    seen.clear()
    ts = cos3d.load(trained_run)
    engine = QueryEngine(ts)
    for lvl in ts.fields:
        engine.calibration_for(lvl)
    calibrated = {t.lower() for t in seen}
    assert calibrated
    assert not held & trained, f"held-out prompts embedded in training: {sorted(held & trained)}"
    assert not held & calibrated, f"held-out prompts embedded in calibration: {sorted(held & calibrated)}"


def test_overlap_with_calibration_or_training_names_is_refused(tabletop_dir, tmp_path):
    from cos3d.readers import load_scene

    scene = load_scene(tabletop_dir)
    with pytest.raises(Cos3dError, match="calibration vocabulary: 'elephant'"):
        tabletop_queries(scene, absent=("teapot", "elephant"))
    with pytest.raises(Cos3dError, match="names of objects in the scene"):
        tabletop_queries(scene, absent=(scene.labels[1][0],))
    with pytest.raises(Cos3dError, match="absent-part prompts overlap the no-target calibration vocabulary: 'keyboard'"):
        tabletop_queries(scene, absent_parts=("propeller", "keyboard"))
    if scene.parts:
        part_name = next(iter(scene.parts.values())).names[0]
        with pytest.raises(Cos3dError, match="absent-part prompts overlap names in the scene"):
            tabletop_queries(scene, absent_parts=(part_name,))
    # a paraphrase file that reuses a training name is refused before anything is queried
    bad = tmp_path / "scene"
    shutil.copytree(tabletop_dir, bad, ignore=shutil.ignore_patterns("cos3d_masks"))
    d = json.loads((bad / "eval_prompts.json").read_text())
    d["instances"]["3"] = d["instances"].get("3", []) + [scene.labels[3][1]]
    (bad / "eval_prompts.json").write_text(json.dumps(d))
    with pytest.raises(Cos3dError, match="held-out paraphrases .* overlap training names"):
        tabletop_queries(load_scene(bad))


PRESENCE_MARGIN = 0.05
"""How far the presence decisions' accuracy must beat max(always present, always absent) on the fixture's
held-out mix (measured 0.614 against always-absent 0.545 with the shipped settings)."""


def test_cos3d_eval_tabletop(trained_run, tmp_path, capsys):
    from cos3d.cli import entrypoint

    assert entrypoint(["eval", "tabletop", "--run", str(trained_run), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "oracle-2D" in out and "always-present baseline" in out and "image prompts (lift)" in out
    res = json.loads((tmp_path / "RESULTS.json").read_text())
    main = res["main"]
    assert res["oracle_2d"] is True and main["pairs"] > 0 and 0 <= main["mIoU"] <= 1
    p = main["presence"]
    assert p["absent"] >= 10 and p["always_absent_baseline"] == pytest.approx(p["absent"] / p["queries"])
    assert {"paraphrase", "absent", "name"} <= set(main["by_kind"])
    assert res["image_prompts"]["lift"]["prompts"] > 0 and "lookup" in res["image_prompts"]
    assert main["mIoU"] > 0.3
    # presence beats the better trivial answer on the same mix by a stated margin
    assert p["accuracy"] >= max(p["always_present_baseline"], p["always_absent_baseline"]) + PRESENCE_MARGIN, p


def test_cos3d_eval_tabletop_budget(trained_run, tmp_path, capsys):
    from cos3d.cli import entrypoint

    assert entrypoint(["eval", "tabletop", "--run", str(trained_run), "--budget", "--no-image-prompts",
                       "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "error budget" in out and "presence frontier (whole objects" in out and "lowest present" in out
    res = json.loads((tmp_path / "RESULTS.json").read_text())
    b = res["budget"]
    rows = list(b["rows"])
    assert rows.index("collaborative") < rows.index("collaborative + frontier presence") < rows.index(
        "collaborative + presence")
    fr = b["presence_frontier"]
    p = res["main"]["presence"]
    assert fr["all"]["present"] == p["present"]
    assert fr["objects"]["absent"] + fr["parts"]["absent"] == p["absent"]
    # the ceiling bounds every row; the frontier row only empties answers of the forced-presence row
    assert all(r["mIoU"] <= b["rows"]["ceiling"]["mIoU"] + 0.02 for r in b["rows"].values())
    assert b["rows"]["collaborative + frontier presence"]["mIoU"] <= b["rows"]["collaborative"]["mIoU"] + 1e-9


def test_cos3d_eval_tabletop_on_development_prompts(trained_run, tmp_path, capsys):
    from cos3d.cli import entrypoint
    from cos3d.eval.devprompts import DEV_ABSENT

    assert entrypoint(["eval", "tabletop", "--run", str(trained_run), "--prompts", "dev", "--no-image-prompts",
                       "--out", str(tmp_path)]) == 0
    assert "development prompts" in capsys.readouterr().out
    res = json.loads((tmp_path / "RESULTS.json").read_text())
    assert res["prompts"] == "dev"
    main = res["main"]
    assert {"paraphrase", "absent"} <= set(main["by_kind"]) and "name" not in main["by_kind"]
    assert main["pairs"] > 0 and 0 <= main["mIoU"] <= 1
    assert main["presence"]["absent"] >= len(DEV_ABSENT)
    asked = {q["query"] for q in main["queries"]}
    assert set(DEV_ABSENT) <= asked and "toy robot" not in asked  # development rows only, no canonical names
