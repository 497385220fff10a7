"""Configs are the CLI: flags derived from the dataclasses, config files and presets, run.json round-trips."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from cos3d.cli import build_parser, entrypoint
from cos3d.commands.train import choose_preset, config_of
from cos3d.core.config import (
    PRESETS_DIR,
    ConfigError,
    apply_config,
    field_docs,
    flag_keys,
    from_dict,
    to_dict,
)
from cos3d.pipeline.recon import ReconConfig
from cos3d.pipeline.train_config import TrainConfig


def _parse(*argv: str) -> TrainConfig:
    argv = ["train", *argv]
    args = build_parser(argv).parse_args(argv)
    return config_of(args)[0]


def test_help_lists_every_field_with_its_docstring(capsys):
    with pytest.raises(SystemExit) as ei:
        entrypoint(["train", "--help"])
    assert ei.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for dest in flag_keys(TrainConfig):
        assert "--" + dest.replace("_", "-") in out, dest
    # docstrings, nested ones included, are the help text
    assert " ".join(field_docs(ReconConfig)["ssim_weight"].split()) in out
    assert "Mask provider: dataset" in out and "--recon.lr-means" in out and "--instance.balance" in out


def test_fast_preset_file_then_flags_override():
    cfg = _parse("--scene", "s", "--config", str(PRESETS_DIR / "fast.yaml"), "--recon.iterations", "100")
    assert cfg.recon.iterations == 100  # the flag wins over the file
    assert cfg.recon.densify is False and cfg.recon.sh_degree == 1  # the rest of the preset holds
    assert cfg.stage1_iterations(20) == 1000  # 50 per view within [500, 3000]
    assert _parse("--scene", "s", "--fast") == _parse("--scene", "s", "--config", "fast")
    assert _parse("--scene", "s", "--fast") == _parse("--scene", "s", "--preset", "fast")
    assert ReconConfig.fast() == _parse("--scene", "s", "--fast").recon
    full = _parse("--scene", "s", "--preset", "full")
    assert full.recon == ReconConfig() and full.stage1_iterations(20) == 6000
    assert full == TrainConfig(scene="s")  # the full preset is the defaults
    # no preset: the device decides (CPU: fast, CUDA: full), and says why
    assert _parse("--scene", "s", "--device", "cpu") == _parse("--scene", "s", "--fast", "--device", "cpu")
    assert choose_preset(None, "cpu")[0] == "fast" and "no CUDA" in choose_preset(None, "cpu")[1]
    assert choose_preset("full", "cpu") == ("full", "asked for with --preset")


def test_later_files_win_and_nested_flattened_flags(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("models:\n  masks: classical\n  embedder: openclip\nrecon:\n  iterations: 7\nlevels: [l]\n")
    b = tmp_path / "b.json"
    b.write_text(json.dumps({"recon": {"iterations": 9}}))
    cfg = _parse("--scene", "s", "--config", str(a), "--config", str(b), "--clip-model", "ViT-B-32")
    assert cfg.recon.iterations == 9 and cfg.levels == ("l",)
    assert cfg.models.masks == "classical" and cfg.models.embedder == "openclip"
    assert cfg.models.clip_model == "ViT-B-32"  # a flattened group: --clip-model, not --models.clip-model
    assert _parse("--scene", "s", "--masks", "sam2", "--embedder", "siglip").models.embedder == "siglip"
    assert _parse("--scene", "s", "--no-progress", "--levels", "s,m").levels == ("s", "m")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("recon:\n  iteratons: 3\n", "recon.iteratons: unknown key"),
        ("recon:\n  iterations: many\n", "recon.iterations: expected an integer"),
        ("models:\n  masks: magic\n", "models.masks: expected one of dataset, sam2, sam2-hf, sam3, classical"),
        ("levels: [l, q]\n", "levels: expected one of s, m, l"),
        ("recon: [1, 2]\n", "recon: expected a mapping"),
        ("recon: {iterations: 3\n", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping of keys at the top level"),
    ],
)
def test_bad_config_file_is_one_line(tmp_path, capsys, text, expected):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    rc = entrypoint(["train", "--scene", str(tmp_path), "--config", str(bad)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("cos3d train: error: ") and expected in err and "bad.yaml" in err


def test_missing_preset_and_library_errors_name_the_flag(tmp_path, capsys):
    rc = entrypoint(["train", "--scene", str(tmp_path), "--config", "no_such_preset"])
    err = capsys.readouterr().err
    assert rc == 2 and "no_such_preset" in err and "fast" in err  # lists the presets there are
    # a library ConfigError names its key; the CLI prints the flag
    rc = entrypoint(["train", "--scene", str(tmp_path), "--masks", "sam2"])  # labels needs dataset masks
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("cos3d train: error: --embedder labels embeds mask names"), err
    rc = entrypoint(["train", "--scene", str(tmp_path), "--recon.init-opacity", "2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--recon.init-opacity must be in (0, 1)" in err, err
    with pytest.raises(SystemExit) as ei:  # a bad value for a typed flag: argparse's one error line
        entrypoint(["train", "--scene", "s", "--recon.iterations", "lots"])
    assert ei.value.code == 2
    assert "expected an integer" in capsys.readouterr().err


def test_dict_round_trip_and_required_fields():
    cfg = apply_config(TrainConfig(scene="s", out=Path("runs/x"), levels=("l",)), "fast")
    cfg = dataclasses.replace(cfg, recon=dataclasses.replace(cfg.recon, background=(1.0, 0.5, 0.0)))
    d = json.loads(json.dumps(to_dict(cfg)))
    assert "seed" not in d["recon"]  # parent-set fields stay out
    assert from_dict(TrainConfig, d) == cfg
    with pytest.raises(ConfigError, match="scene: is required"):
        from_dict(TrainConfig, {"out": "x"})


def test_run_json_round_trips_into_its_config(trained_run, tabletop_dir):
    from cos3d.pipeline.run_folder import RunFolder

    rec = RunFolder(Path(trained_run)).read_record()
    threads = int(os.environ["COS3D_THREADS"]) if os.environ.get("COS3D_THREADS") else None  # recorded as used
    expected = apply_config(TrainConfig(scene=str(tabletop_dir), out=Path(trained_run), threads=threads), "fast")
    assert rec.train_config() == expected
    # and a run.json is itself a config file for the next run
    assert _parse("--config", str(Path(trained_run) / "run.json")) == expected


def test_every_flag_has_its_documentation():
    from cos3d.commands.prepare_masks import PrepareMasksConfig
    from cos3d.commands.query import QueryConfig
    from cos3d.core.config import _fields, _is_config

    def undocumented(cls, prefix="", exclude=()):
        docs = field_docs(cls)
        for f, tp in _fields(cls, exclude):
            if _is_config(tp):
                yield from undocumented(tp, f"{prefix}{f.name}.", tuple(f.metadata.get("exclude", ())))
            elif not docs.get(f.name):
                yield f"{cls.__name__}.{prefix}{f.name}"

    missing = [m for c in (TrainConfig, PrepareMasksConfig, QueryConfig) for m in undocumented(c)]
    assert missing == []
