"""The ``cos3d`` command's shell: help, argument errors, and the one-line scene errors it prints.

End-to-end subcommand errors are tested with each subcommand; here only what every command shares.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from cos3d.cli import COMMANDS, build_parser, entrypoint
from cos3d.core.errors import Cos3dError, SceneFormatError
from cos3d.readers import load_scene


def run_cos3d(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "cos3d", *args], check=False, capture_output=True, text=True, timeout=120, env=env
    )


def available_commands() -> list[str]:
    return [c for c in COMMANDS if importlib.util.find_spec(f"cos3d.commands.{c}") is not None]


def test_help_lists_subcommands():
    r = run_cos3d("--help")
    assert r.returncode == 0, r.stderr
    assert "usage: cos3d" in r.stdout
    cmds = available_commands()
    assert cmds, "no subcommand module found in cos3d.commands"
    for name in cmds:
        assert name in r.stdout


def test_unknown_flag_exits_2_with_one_error_line():
    r = run_cos3d("--bogus")
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("cos3d: error:"), r.stderr
    assert r.stdout == ""


def test_no_command_exits_2():
    r = run_cos3d()
    assert r.returncode == 2
    assert len([line for line in r.stderr.splitlines() if "error:" in line]) == 1, r.stderr


def test_entrypoint_bad_flag_in_process():
    with pytest.raises(SystemExit) as ei:
        entrypoint(["--bogus"])
    assert ei.value.code == 2
    assert build_parser().prog == "cos3d"


def test_nonexistent_scene_is_a_one_line_user_error(tmp_path):
    missing = tmp_path / "nonexistent"
    with pytest.raises(SceneFormatError) as ei:
        load_scene(missing)
    msg = str(ei.value)
    assert isinstance(ei.value, Cos3dError)  # the CLI turns these into one line + exit 2
    assert "\n" not in msg and str(missing) in msg and "--data-root" in msg


def test_named_scene_missing_under_data_root(tmp_path):
    with pytest.raises(SceneFormatError) as ei:
        load_scene("scannet/scene0999", data_root=tmp_path)
    msg = str(ei.value)
    assert "scannet/scene0999" in msg and str(tmp_path / "scannet" / "scene0999") in msg


def test_folder_of_unknown_layout(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(SceneFormatError) as ei:
        load_scene(tmp_path)
    msg = str(ei.value)
    assert str(tmp_path) in msg and "transforms.json" in msg and "sparse/0" in msg


@pytest.mark.parametrize(
    "argv, hint",
    [
        (["train", "--scene", "s"], "--resume"),
        (["prepare", "tabletop", "--out", "x"], "nothing was written"),
        (["prepare", "masks", "--scene", "s"], "run the same command again"),
    ],
)
def test_interrupt_hint_is_true_for_the_command(monkeypatch, capsys, argv, hint):
    import importlib

    name = argv[1] if argv[0] == "prepare" else argv[0]
    module = {"train": "train", "tabletop": "prepare_tabletop", "masks": "prepare_masks"}[name]

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(f"cos3d.commands.{module}"), "run", interrupted)
    assert entrypoint(argv) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and hint in err, err
    if argv[:2] == ["prepare", "tabletop"]:
        assert "--resume" not in err  # prepare tabletop has no such flag


def test_help_does_not_import_torch():
    r = subprocess.run(
        [sys.executable, "-c", "import sys; from cos3d.cli import build_parser; build_parser(['--help']); "
         "print('torch' in sys.modules)"],
        check=True, capture_output=True, text=True, timeout=120,
    )
    assert r.stdout.strip() == "False"


def test_brief_quotes_one_line_cut_at_a_word():
    from cos3d.core.errors import brief

    e = ValueError("the quick brown fox jumps over the lazy dog\nsecond line")
    assert brief(e, 20) == "ValueError: the quick brown fox…"
    assert brief(e) == "ValueError: the quick brown fox jumps over the lazy dog"
    assert brief(KeyError()) == "KeyError"
