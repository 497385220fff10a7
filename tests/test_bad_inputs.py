"""Bad inputs and write faults, one row each: how to build the input, the call, and what the one-line
error must say. The next bad input found is one row to add to :data:`CASES`.

A row's ``make(tmp_path, monkeypatch)`` builds the input and returns ``(call, expected)``: ``call()``
must raise a :class:`Cos3dError` whose message is ONE line containing every string of ``expected``
(file names, counts, the fix). ``check(tmp_path)`` (optional) then asserts what must not have happened
(no payload ran, nothing half-written left behind). CLI rows (``cli=True``) return the argument list
instead of a call: ``cos3d.cli.entrypoint`` must exit with 2 and print exactly one line on stderr.
"""

from __future__ import annotations

import errno
import math
import os
import pickle
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from cos3d.errors import Cos3dError
from ply_faults import write_nonfinite_ply

W, H = 40, 30
MARKER = "PAYLOAD_RAN"


# ---------------------------------------------------------------------------------------------- helpers
def _look_at(eye) -> np.ndarray:
    eye = np.asarray(eye, dtype=np.float64)
    z = -eye / np.linalg.norm(eye)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, np.cross(z, x), z], 1)
    c2w[:3, 3] = eye
    return c2w


def _rig(n: int = 3):
    from cos3d.scene import Camera

    K = np.array([[45.0, 0.0, 19.5], [0.0, 45.0, 14.5], [0.0, 0.0, 1.0]])
    return [
        Camera(K=K, c2w=_look_at((2 * math.cos(2 * math.pi * i / n), 2 * math.sin(2 * math.pi * i / n), 0.7)),
               width=W, height=H)  # fmt: skip
        for i in range(n)
    ]


def _scannet(root: Path, **kwargs) -> Path:
    from cos3d.readers.writers import write_scannet

    rng = np.random.default_rng(0)
    cams = _rig(kwargs.pop("n", 3))
    images = [rng.integers(0, 255, (H, W, 3), dtype=np.uint8) for _ in cams]
    return write_scannet(root, cams, images=images, **kwargs)


def _image(path: Path, w: int, h: int) -> None:
    from cos3d.readers.writers import save_image

    save_image(path, np.zeros((h, w, 3), np.uint8))


def _gaussians(n: int = 16):
    from cos3d.gaussians import Gaussians

    gen = torch.Generator().manual_seed(0)
    return Gaussians.from_points(torch.rand(n, 3, generator=gen), torch.rand(n, 3, generator=gen), sh_degree=1)


class _Evil:
    """Unpickling this creates the marker file: proof that a payload ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # builtins.open creates the file


def _stage0_resume(run: Path) -> Callable[[], Any]:
    from cos3d.readers import load_scene
    from cos3d.recon import ReconConfig, reconstruct

    scene = load_scene(_scannet(run.parent / "scene", n=4))
    cfg = ReconConfig.fast(iterations=5, progress=False, init="random", init_random_points=50)
    return lambda: reconstruct(scene, cfg, run, resume=True)


def _fail_os(monkeypatch, name: str, err: int, module=os) -> None:
    """Make ``module.name`` raise ``OSError(err)`` (what a full disk / read-only mount / denied write does)."""

    def fail(*args, **kwargs):
        raise OSError(err, os.strerror(err), str(args[0]) if args else None)

    monkeypatch.setattr(module, name, fail)


_labels = {}


def _embedder(kind: str, tmp: Path):
    """Embedders are built once per test session (loading weights is the slow part)."""
    if kind not in _labels:
        from cos3d.vision import create_embedder
        from cos3d.vision.testing import write_random_siglip, write_tiny_openclip

        if kind == "labels":
            _labels[kind] = create_embedder("labels")
        elif kind == "openclip":
            cfg, ckpt = write_tiny_openclip(tmp / "clip")
            _labels[kind] = create_embedder("openclip", model=str(cfg), checkpoint=ckpt, device="cpu")
        else:
            _labels[kind] = create_embedder("siglip", model=str(write_random_siglip(tmp / "siglip")), device="cpu")
    return _labels[kind]


# ---------------------------------------------------------------------------------------------- the rows
@dataclass
class Case:
    id: str
    make: Callable[[Path, Any], tuple[Any, list[str]]]
    check: Callable[[Path], None] | None = None
    cli: bool = False


def _ckpt_malicious(tmp, mp):
    run = tmp / "run" / "recon"
    call = _stage0_resume(run)
    run.mkdir(parents=True, exist_ok=True)
    torch.save({"step": 1, "params": {}, "x": _Evil(tmp / MARKER)}, run / "checkpoint.pt")
    return call, [f"{run / 'checkpoint.pt'}: not a cos3d stage-0 checkpoint", "nothing in it was run",
                  "delete it and run again with --resume"]  # fmt: skip


def _ckpt_malicious_plain_pickle(tmp, mp):
    run = tmp / "run" / "recon"
    call = _stage0_resume(run)
    run.mkdir(parents=True, exist_ok=True)
    (run / "checkpoint.pt").write_bytes(pickle.dumps({"step": 1, "x": _Evil(tmp / MARKER)}, protocol=2))
    return call, ["checkpoint.pt: not a cos3d stage-0 checkpoint", "delete it and run again with --resume"]


def _no_marker(tmp: Path) -> None:
    assert not (tmp / MARKER).exists(), "the checkpoint's payload ran"


def _ckpt_truncated(tmp, mp):
    run = tmp / "run" / "recon"
    call = _stage0_resume(run)
    run.mkdir(parents=True, exist_ok=True)
    torch.save({"step": 3, "params": {"means": torch.zeros(100, 3)}}, run / "checkpoint.pt")
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    return call, ["checkpoint.pt: corrupt stage-0 checkpoint", "delete it and run again with --resume"]


def _ckpt_garbage(tmp, mp):
    run = tmp / "run" / "recon"
    call = _stage0_resume(run)
    run.mkdir(parents=True, exist_ok=True)
    (run / "checkpoint.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    return call, ["checkpoint.pt: ", "stage-0 checkpoint", "delete it and run again with --resume"]


def _ckpt_foreign_dict(tmp, mp):
    run = tmp / "run" / "recon"
    call = _stage0_resume(run)
    run.mkdir(parents=True, exist_ok=True)
    torch.save({"model": torch.zeros(3)}, run / "checkpoint.pt")  # loads fine, but is not ours
    return call, ["checkpoint.pt: not a cos3d stage-0 checkpoint (missing or malformed entries)", "--resume"]


def _ply_nan_rows(tmp, mp):
    from cos3d.ply import read_ply

    g = _gaussians(16)
    g.means[3, 1] = float("nan")
    g.log_scales[9, 0] = float("inf")
    write_nonfinite_ply(tmp / "scene.ply", g)
    return (lambda: read_ply(tmp / "scene.ply")), ["scene.ply: 2 of 16 Gaussians have NaN/inf values", "first: row 3"]


def _ply_all_nan(tmp, mp):
    from cos3d.ply import read_ply

    g = _gaussians(16)
    g.means[:] = float("nan")
    write_nonfinite_ply(tmp / "scene.ply", g)
    return (lambda: read_ply(tmp / "scene.ply", features=False)), ["scene.ply: 16 of 16 Gaussians have NaN/inf"]


def _scannet_mixed_sizes(tmp, mp):
    from cos3d.readers import load_scene

    root = _scannet(tmp / "s")
    _image(root / "color" / "2.png", W * 2, H * 2)
    return (lambda: load_scene(root)), ["colour images of different sizes", f"0.png is {W}x{H}", f"2.png is {2 * W}x{2 * H}"]


def _scannet_depth_vs_intrinsics(tmp, mp):
    from cos3d.readers import load_scene

    cams = _rig()
    # depth written at the colour resolution, with intrinsic_depth.txt made for half of it
    root = _scannet(tmp / "s", depths=[np.ones((H, W))] * 3, depth_K=cams[0].scaled(W // 2, H // 2).K)
    return (lambda: load_scene(root)), ["intrinsic_depth.txt: principal point", f"{W}x{H} depth", "about 20x15"]


def _scannet_depth_aspect(tmp, mp):
    from cos3d.readers import load_scene

    root = _scannet(tmp / "s", depths=[np.ones((H, W // 2))] * 3)
    (root / "intrinsic" / "intrinsic_depth.txt").unlink()
    return (lambda: load_scene(root)), ["depth/0.png: depth is 20x30", "another aspect ratio", "intrinsic_depth.txt"]


def _scannet_instance_aspect(tmp, mp):
    from cos3d.readers import load_scene

    root = _scannet(tmp / "s", instances=[np.ones((H, W // 2), np.int64)] * 3)
    return (lambda: load_scene(root)), ["instance/0.png: instance map is 20x30", "another aspect ratio"]


def _colmap_second_image_size(tmp, mp):
    from cos3d.readers import load_scene
    from cos3d.readers.writers import write_colmap

    root = write_colmap(tmp / "c", _rig())  # one shared camera
    _image(root / "images" / "2.png", W + 8, H)
    return (lambda: load_scene(root)), [f"2.png: image is {W + 8}x{H} but camera", "cameras.bin"]


def _nerfstudio_image_size(tmp, mp):
    from cos3d.readers import load_scene
    from cos3d.readers.writers import write_transforms_json

    root = write_transforms_json(tmp / "n", _rig())
    _image(root / "images" / "1.png", W + 8, H)
    return (lambda: load_scene(root)), [f"1.png: image is {W + 8}x{H} but transforms.json says {W}x{H}"]


def _prompt(kind: str):
    def make(tmp, mp):
        emb = _embedder(kind, tmp)
        prompt = "a red mug on the table " * 435
        return (lambda: emb.embed_text([prompt[:10_000]])), ["prompt too long", "10,000 characters",
                                                              "the limit is", "tokens"]  # fmt: skip

    return make


def _mask_cache_corrupt(tmp, mp):
    from cos3d.vision import create_mask_provider, load_view, prepare_masks
    from cos3d.vision.cache import view_path
    from cos3d.vision.testing import write_synthetic_scene

    scene = write_synthetic_scene(tmp / "scene", n_frames=2)
    cache = tmp / "run" / "masks"
    prepare_masks(scene, None, create_mask_provider("dataset", scene=scene), _embedder("labels", tmp), cache,
                  progress=False)  # fmt: skip
    p = view_path(cache, scene.frames[1].name)
    p.write_bytes(p.read_bytes()[:100])
    return (lambda: load_view(cache, scene.frames[1].name)), [f"{p}: corrupt mask-cache file", "marked missing",
                                                              "run again with --resume"]  # fmt: skip


def _write_enospc(tmp, mp):
    from cos3d.atomic import write_json

    _fail_os(mp, "fsync", errno.ENOSPC)
    return (lambda: write_json(tmp / "out" / "run.json", {"a": 1})), [
        f"cannot write {tmp / 'out' / 'run.json'}: no space left"]


def _write_enospc_in_writer(tmp, mp):
    from cos3d.atomic import atomic_path

    def call():
        with atomic_path(tmp / "out" / "masks.npz") as t:
            t.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")  # what np.savez raises on a full disk

    return call, [f"cannot write {tmp / 'out' / 'masks.npz'}: no space left"]


def _write_torch_full_disk(tmp, mp):
    import cos3d.atomic as atomic

    mp.setattr(atomic, "_disk_full", lambda folder: True)

    def call():
        with atomic.atomic_path(tmp / "out" / "fields.pt") as t:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    return call, [f"cannot write {tmp / 'out' / 'fields.pt'}: no space left"]


def _write_read_only(tmp, mp):
    from cos3d.ply import write_ply

    (tmp / "out").mkdir()
    real_open = os.open

    def ro_open(path, flags, *args, **kwargs):
        if str(path).startswith(str(tmp / "out")) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    mp.setattr(os, "open", ro_open)
    return (lambda: write_ply(tmp / "out" / "g.ply", _gaussians())), [
        f"cannot write {tmp / 'out' / 'g.ply'}: the file system is read-only"]


def _write_permission_denied(tmp, mp):
    from cos3d.atomic import write_json

    _fail_os(mp, "replace", errno.EACCES)
    return (lambda: write_json(tmp / "out" / "run.json", {})), [f"cannot write {tmp / 'out' / 'run.json'}: permission denied"]


def _write_folder_is_a_file(tmp, mp):
    from cos3d.vision.cache import save_view
    from cos3d.vision.masks import MaskSet

    (tmp / "masks").write_text("I am a file")
    ms = MaskSet(masks=np.zeros((0, 4, 4), bool), level=np.zeros(0, np.int64), score=np.zeros(0, np.float32),
                 box=np.zeros((0, 4), np.float32))  # fmt: skip
    return (lambda: save_view(tmp / "masks" / "views" / "0.npz", key="k", mkey="m", img_hash="h", masks=ms,
                              emb=np.zeros((0, 8))),
            ["cannot write", "masks/views/0.npz", "is a file, not a folder"])  # fmt: skip


def _write_file_is_a_folder(tmp, mp):
    from cos3d.ply import write_ply

    (tmp / "out.ply").mkdir()
    return (lambda: write_ply(tmp / "out.ply", _gaussians())), [f"cannot write {tmp / 'out.ply'}: it is a folder"]


def _nothing_left_in(folder: str) -> Callable[[Path], None]:
    def check(tmp: Path) -> None:
        d = tmp / folder
        left = sorted(p.name for p in d.iterdir()) if d.is_dir() else []
        assert left == [], f"half-written files left behind: {left}"

    return check


def _cli_mixed_sizes(tmp, mp):
    root = _scannet(tmp / "s")
    _image(root / "color" / "1.png", W * 2, H * 2)
    return ["prepare", "masks", "--scene", str(root), "--masks", "dataset", "--embedder", "labels",
            "--no-progress"], ["1.png", "different sizes"]  # fmt: skip


def _cli_eval_out(kind: str):
    """``cos3d eval tabletop --out`` that cannot take RESULTS.json: refused before anything is evaluated (a
    budget or an ablation runs for minutes to an hour, and used to fail only when writing)."""

    def make(tmp, mp):
        import cos3d.commands.eval as ev

        run = tmp / "run"
        run.mkdir()
        mp.setattr(ev, "_tabletop", lambda cfg: (tmp / MARKER).write_text("evaluated") and {})
        if kind == "under-a-file":
            (tmp / "f").write_text("x")
            return ["eval", "tabletop", "--run", str(run), "--out", str(tmp / "f" / "out")], [
                "--out", "a part of its folder path is a file"]
        if kind == "is-a-file":
            (tmp / "f").write_text("x")
            return ["eval", "tabletop", "--run", str(run), "--out", str(tmp / "f")], ["--out", "is a file"]
        _fail_os(mp, "open", errno.EROFS)  # the folder exists, no file can be created in it
        (tmp / "ro").mkdir()
        return ["eval", "tabletop", "--run", str(run), "--out", str(tmp / "ro")], ["--out", "read-only"]

    return make


CASES = [
    Case("stage0-checkpoint-malicious", _ckpt_malicious, _no_marker),
    Case("stage0-checkpoint-malicious-plain-pickle", _ckpt_malicious_plain_pickle, _no_marker),
    Case("stage0-checkpoint-truncated", _ckpt_truncated),
    Case("stage0-checkpoint-garbage", _ckpt_garbage),
    Case("stage0-checkpoint-foreign", _ckpt_foreign_dict),
    Case("ply-nan-rows", _ply_nan_rows),
    Case("ply-all-nan", _ply_all_nan),
    Case("scannet-mixed-image-sizes", _scannet_mixed_sizes),
    Case("scannet-depth-vs-intrinsic_depth", _scannet_depth_vs_intrinsics),
    Case("scannet-depth-aspect-without-intrinsics", _scannet_depth_aspect),
    Case("scannet-instance-map-aspect", _scannet_instance_aspect),
    Case("colmap-image-vs-camera-size", _colmap_second_image_size),
    Case("nerfstudio-image-vs-wh", _nerfstudio_image_size),
    Case("prompt-too-long-labels", _prompt("labels")),
    Case("prompt-too-long-openclip", _prompt("openclip")),
    Case("prompt-too-long-siglip", _prompt("siglip")),
    Case("mask-cache-corrupt-entry", _mask_cache_corrupt),
    Case("write-disk-full-at-fsync", _write_enospc, _nothing_left_in("out")),
    Case("write-disk-full-in-writer", _write_enospc_in_writer, _nothing_left_in("out")),
    Case("write-disk-full-torch-save", _write_torch_full_disk, _nothing_left_in("out")),
    Case("write-read-only-folder", _write_read_only, _nothing_left_in("out")),
    Case("write-permission-denied", _write_permission_denied, _nothing_left_in("out")),
    Case("write-folder-is-a-file", _write_folder_is_a_file),
    Case("write-file-is-a-folder", _write_file_is_a_folder, lambda tmp: None),
    Case("cli-scene-mixed-image-sizes", _cli_mixed_sizes, cli=True),
    Case("cli-eval-out-under-a-file", _cli_eval_out("under-a-file"), _no_marker, cli=True),
    Case("cli-eval-out-is-a-file", _cli_eval_out("is-a-file"), _no_marker, cli=True),
    Case("cli-eval-out-read-only", _cli_eval_out("read-only"), _no_marker, cli=True),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line(case: Case, tmp_path, monkeypatch, capsys):
    built, expected = case.make(tmp_path, monkeypatch)
    if case.cli:
        from cos3d.cli import entrypoint

        capsys.readouterr()
        rc = entrypoint(built)
        err = capsys.readouterr().err
        assert rc == 2, err
        lines = err.strip("\n").splitlines()
        assert len(lines) == 1, err
        msg = lines[0]
    else:
        with pytest.raises(Cos3dError) as ei:
            built()
        msg = str(ei.value)
        assert "\n" not in msg, msg
    for s in expected:
        assert s in msg, f"{s!r} not in {msg!r}"
    monkeypatch.undo()
    if case.check is not None:
        case.check(tmp_path)


def test_corrupt_mask_cache_entry_is_recomputed_by_the_next_prepare(tmp_path, capsys):
    """The fix the corrupt-cache message gives works: the entry is missing for the next prepare, which
    recomputes it with a note, and the view loads again."""
    from cos3d.vision import create_mask_provider, load_manifest, load_view, prepare_masks
    from cos3d.vision.cache import view_path
    from cos3d.vision.testing import write_synthetic_scene

    scene = write_synthetic_scene(tmp_path / "scene", n_frames=2)
    cache = tmp_path / "masks"
    prov, emb = create_mask_provider("dataset", scene=scene), _embedder("labels", tmp_path)
    prepare_masks(scene, None, prov, emb, cache, progress=False)
    name = scene.frames[0].name
    view_path(cache, name).write_bytes(b"garbage")
    with pytest.raises(Cos3dError):
        load_view(cache, name)
    assert name not in load_manifest(cache)["views"]
    st = prepare_masks(scene, None, prov, emb, cache, progress=False)
    assert (st.done, st.corrupt) == (1, 1) and "corrupt mask-cache file" in capsys.readouterr().err
    load_view(cache, name)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_outputs_take_the_umask_permissions(tmp_path, umask):
    """Like ``open()``: a new file is 0666 & ~umask (not mkstemp's 0600); a replaced one keeps its mode."""
    from cos3d.atomic import atomic_path, write_json
    from cos3d.ply import write_ply

    old = os.umask(umask)
    try:
        write_json(tmp_path / "run.json", {"a": 1})
        write_ply(tmp_path / "g.ply", _gaussians())
        with atomic_path(tmp_path / "x.pt") as t:
            torch.save({"a": torch.zeros(1)}, t)
        for name in ("run.json", "g.ply", "x.pt"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
        os.chmod(tmp_path / "run.json", 0o640)
        write_json(tmp_path / "run.json", {"a": 2})
        assert stat.S_IMODE((tmp_path / "run.json").stat().st_mode) == 0o640
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.ply", "run.json", "x.pt"]  # no temp files
