"""Bad inputs and write faults, one row each: how to build the input, the call, and what the one-line
error must say. The next bad input found is one row to add to :data:`CASES`.

A row's ``make(tmp_path, monkeypatch)`` builds the input and returns ``(call, expected)``: ``call()``
must raise a :class:`Cos3dError` whose message is ONE line containing every string of ``expected``
(file names, counts, the fix). ``check(tmp_path)`` (optional) then asserts what must not have happened
(no payload ran, nothing half-written left behind). CLI rows (``cli=True``) return the argument list
instead of a call: ``cos3d.cli.entrypoint`` must exit with the row's ``rc`` (2 for a user error, 130
for an interrupt) and print exactly one line on stderr, never a traceback.

Write-failure rows make the OS refuse the output (:func:`_blocked`: a file in the way, EROFS, EACCES,
EPERM, ENOSPC) and stub the command's work with :func:`_marker`, so the row also proves the output was
checked before any work ran.
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

from cos3d.core.errors import Cos3dError
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
    from cos3d.data.scene import Camera

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
    from cos3d.data.gaussians import Gaussians

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
    from cos3d.pipeline.recon import ReconConfig, reconstruct

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
        from cos3d.testing.vision import write_random_siglip, write_tiny_openclip

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
    rc: int = 2
    """The exit status of a CLI row (2: a user error; 130: interrupted)."""


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
    from cos3d.data.ply import read_ply

    g = _gaussians(16)
    g.means[3, 1] = float("nan")
    g.log_scales[9, 0] = float("inf")
    write_nonfinite_ply(tmp / "scene.ply", g)
    return (lambda: read_ply(tmp / "scene.ply")), ["scene.ply: 2 of 16 Gaussians have NaN/inf values", "first: row 3"]


def _ply_all_nan(tmp, mp):
    from cos3d.data.ply import read_ply

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
    from cos3d.testing.vision import write_synthetic_scene

    scene = write_synthetic_scene(tmp / "scene", n_frames=2)
    cache = tmp / "run" / "masks"
    prepare_masks(scene, None, create_mask_provider("dataset", scene=scene), _embedder("labels", tmp), cache,
                  progress=False)  # fmt: skip
    p = view_path(cache, scene.frames[1].name)
    p.write_bytes(p.read_bytes()[:100])
    return (lambda: load_view(cache, scene.frames[1].name)), [f"{p}: corrupt mask-cache file", "marked missing",
                                                              "run again with --resume"]  # fmt: skip


def _write_enospc(tmp, mp):
    from cos3d.core.atomic import write_json

    _fail_os(mp, "fsync", errno.ENOSPC)
    return (lambda: write_json(tmp / "out" / "run.json", {"a": 1})), [
        f"cannot write {tmp / 'out' / 'run.json'}: no space left"]


def _write_enospc_in_writer(tmp, mp):
    from cos3d.core.atomic import atomic_path

    def call():
        with atomic_path(tmp / "out" / "masks.npz") as t:
            t.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")  # what np.savez raises on a full disk

    return call, [f"cannot write {tmp / 'out' / 'masks.npz'}: no space left"]


def _write_torch_full_disk(tmp, mp):
    import cos3d.core.atomic as atomic

    mp.setattr(atomic, "_disk_full", lambda folder: True)

    def call():
        with atomic.atomic_path(tmp / "out" / "fields.pt") as t:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    return call, [f"cannot write {tmp / 'out' / 'fields.pt'}: no space left"]


def _write_read_only(tmp, mp):
    from cos3d.data.ply import write_ply

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
    from cos3d.core.atomic import write_json

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
    from cos3d.data.ply import write_ply

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


def _cli_eval_out_kind(tmp, mp, kind: str):
    import cos3d.commands.eval as ev

    (tmp / "run").mkdir()
    mp.setattr(ev, "_tabletop", _marker(tmp))
    out = _blocked(kind, tmp, mp)
    return ["eval", "tabletop", "--run", str(tmp / "run"), "--out", str(out)], ["--out", str(out), _WHY[kind]]


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



# ------------------------------------------------------------------- issue 25: scene paths stay inside
_OUT = "outside the scene folder"


def _ns(tmp: Path, **kw) -> Path:
    from cos3d.readers.writers import write_transforms_json

    return write_transforms_json(tmp / "s", _rig(), **kw)


def _outside_image(tmp: Path, name: str = "stolen.png") -> Path:
    """An image outside the scene folder (one the user owns, that a hostile scene points at)."""
    p = tmp / "private" / name
    _image(p, W, H)
    return p


def _edit_transforms(root: Path, edit: Callable[[dict], None]) -> None:
    import json

    meta = json.loads((root / "transforms.json").read_text())
    edit(meta)
    (root / "transforms.json").write_text(json.dumps(meta))


def _load(root: Path):
    from cos3d.readers import load_scene

    return lambda: load_scene(root)


def _ns_file_path(value: Callable[[Path], str]):
    """A frame's ``file_path`` naming a file outside the scene (that file exists: the read would work)."""

    def make(tmp, mp):
        root = _ns(tmp)
        v = value(tmp)
        _edit_transforms(root, lambda m: m["frames"][1].__setitem__("file_path", v))
        return _load(root), [f"transforms.json: file_path {v!r}", _OUT, "COS3D_TRUST_SCENE_PATHS=1"]

    return make


def _outside_rel(tmp: Path) -> str:
    _outside_image(tmp)
    return "../private/stolen.png"


def _outside_abs(tmp: Path) -> str:
    return str(_outside_image(tmp))


def _outside_no_suffix(tmp: Path) -> str:
    _outside_image(tmp)
    return "../private/stolen"  # Blender style: the reader adds .png


def _ns_symlinked_image(tmp, mp):
    root = _ns(tmp)
    (root / "images" / "1.png").unlink()
    (root / "images" / "1.png").symlink_to(_outside_image(tmp))
    return _load(root), ["transforms.json: file_path 'images/1.png' resolves to", str(tmp / "private"), _OUT]


def _ns_symlinked_folder(tmp, mp):
    root = _ns(tmp)
    import shutil

    shutil.move(root / "images", tmp / "private")
    (root / "images").symlink_to(tmp / "private", target_is_directory=True)
    return _load(root), ["transforms.json: file_path 'images/0.png'", _OUT]


def _ns_sidecar_link(name: str):
    def make(tmp, mp):
        root = _ns(tmp)
        if name == "splits.json":
            (tmp / "private").mkdir()
            (tmp / "private" / name).write_text('{"train": ["0"]}')
        else:
            (tmp / "private").mkdir()
            os.replace(root / name, tmp / "private" / name)
        (root / name).symlink_to(tmp / "private" / name)
        return _load(root), [f"file {name!r} resolves to {tmp / 'private' / name}", _OUT]

    return make


def _ns_nul(tmp, mp):
    root = _ns(tmp)
    _edit_transforms(root, lambda m: m["frames"][0].__setitem__("file_path", "images/0.png\x00.jpg"))
    return _load(root), ["transforms.json: file_path", "contains a NUL byte"]


def _ns_depth_outside(tmp, mp):
    root = _ns(tmp, depths=[np.ones((H, W))] * 3)
    save = tmp / "private" / "d.png"
    from cos3d.readers.writers import save_depth

    save_depth(save, np.ones((H, W)))
    _edit_transforms(root, lambda m: m["frames"][2].__setitem__("depth_file_path", "../private/d.png"))
    return _load(root), ["transforms.json: frame 'images/2.png': depth_file_path '../private/d.png'", _OUT]


def _ns_ply_outside(tmp, mp):
    root = _ns(tmp, points=np.zeros((4, 3)))
    (tmp / "private").mkdir()
    os.replace(root / "sparse_pc.ply", tmp / "private" / "pc.ply")
    _edit_transforms(root, lambda m: m.__setitem__("ply_file_path", str(tmp / "private" / "pc.ply")))
    return _load(root), ["transforms.json: ply_file_path", "pc.ply", _OUT]


def _colmap(tmp: Path, names=None, binary=False) -> Path:
    from cos3d.readers.writers import write_colmap

    return write_colmap(tmp / "c" / "scene", _rig(), names=names, binary=binary)


def _colmap_name(kind: str):
    def make(tmp, mp):
        if kind == "dotdot":
            root = _colmap(tmp, names=["0", "../../private/1", "2"])  # the writer puts the image there
            return _load(root), ["images.txt: image 2 name '../../private/1.png'", _OUT]
        if kind == "binary":
            root = _colmap(tmp, names=["0", "../../private/1", "2"], binary=True)
            return _load(root), ["images.bin: image 2 name '../../private/1.png'", _OUT]
        if kind == "absolute":
            outside = _outside_image(tmp, "1.png")
            root = _colmap(tmp)
            txt = root / "sparse" / "0" / "images.txt"
            txt.write_text(txt.read_text().replace(" 1.png", f" {outside}"))
            return _load(root), [f"images.txt: image 2 name '{outside}'", _OUT]
        if kind == "symlink":
            root = _colmap(tmp)
            (root / "images" / "2.png").unlink()
            (root / "images" / "2.png").symlink_to(_outside_image(tmp))
            return _load(root), ["images.txt: image 3 name '2.png' resolves to", _OUT]
        root = _colmap(tmp)  # the model file itself a link out of the scene
        cams = root / "sparse" / "0" / "cameras.txt"
        (tmp / "private").mkdir()
        os.replace(cams, tmp / "private" / "cameras.txt")
        cams.symlink_to(tmp / "private" / "cameras.txt")
        return _load(root), ["sparse/0: file 'cameras.txt' resolves to", _OUT]

    return make


def _scannet_link(sub: str, name: str):
    """A file of a ScanNet-layout scene (tabletop scenes use it too) replaced by a symlink out of it."""

    def make(tmp, mp):
        root = _scannet(tmp / "s", depths=[np.ones((H, W))] * 3, instances=[np.ones((H, W), np.int64)] * 3,
                        labels={1: "mug"})
        target = root / sub / name if sub else root / name
        (tmp / "private").mkdir(exist_ok=True)
        moved = tmp / "private" / name
        os.replace(target, moved)
        target.symlink_to(moved)
        return _load(root), [f"file {name!r} resolves to {moved}", _OUT]

    return make


def _tabletop_sidecar_link(name: str):
    """A tabletop scene's evaluation prompts or simulation record (read by eval and the robot
    simulation) as a link out of the scene: refused when the scene loads."""

    def make(tmp, mp):
        root = _scannet(tmp / "s")
        (tmp / "private").mkdir()
        (tmp / "private" / name).write_text("{}")
        (root / name).symlink_to(tmp / "private" / name)
        return _load(root), [f"file {name!r} resolves to {tmp / 'private' / name}", _OUT]

    return make


def _scannet_folder_link(tmp, mp):
    root = _scannet(tmp / "s")
    os.replace(root / "pose", tmp / "elsewhere")
    (root / "pose").symlink_to(tmp / "elsewhere", target_is_directory=True)
    return _load(root), ["pose: file '0.txt' resolves to", _OUT]


def _trusted_still_refuses_nul(tmp, mp):
    mp.setenv("COS3D_TRUST_SCENE_PATHS", "1")
    return _ns_nul(tmp, mp)


def _scannet_duplicate_stems(tmp, mp):
    root = _scannet(tmp / "s")
    _image(root / "color" / "1.jpg", W, H)
    return _load(root), ["color: both", "1.png", "1.jpg", "keep one"]


def _duplicate_frame_names(tmp, mp):
    from cos3d.data.scene import Frame, Scene

    cam = _rig(1)[0]
    frames = [Frame(name="a", camera=cam, image_path=tmp / "x" / "a.png"),
              Frame(name="a", camera=cam, image_path=tmp / "y" / "a.png")]  # fmt: skip
    return (lambda: Scene(root=tmp, frames=frames)), ["two frames are named 'a'", "x/a.png and", "y/a.png",
                                                     "rename one"]  # fmt: skip


# ---------------------------------------------------------------------- run.json: recorded paths
def _run_json(tmp: Path, **data) -> Path:
    import json

    run = tmp / "run"
    run.mkdir(parents=True, exist_ok=True)
    rec = {"format": "cos3d-run", "version": 2, "scene": str(tmp / "s"), "stages": {}}
    rec.update(data)
    (run / "run.json").write_text(json.dumps(rec))
    return run


def _run_json_cache(value, expected):
    def make(tmp, mp):
        from cos3d.pipeline.run_folder import RunFolder

        run = _run_json(tmp, stages={"masks": {"done": True, "cache": value(tmp) if callable(value) else value}})
        return (lambda: RunFolder(run).read_record().checked_mask_cache()), expected

    return make


def _run_json_scene_not_text(tmp, mp):
    from cos3d.pipeline.run_folder import RunFolder

    run = _run_json(tmp, scene=["/etc"])
    return (lambda: RunFolder(run).read_record()), ["run.json: unreadable run record", "'scene' must be a path string"]


# ------------------------------------------------------------------- write failures, named by flag
def _blocked(kind: str, tmp: Path, mp) -> Path:
    """An output path that cannot be written: under a file, a file itself, or in a folder where the
    OS refuses file creation with ``kind`` (EROFS, EACCES, EPERM, ENOSPC)."""
    if kind == "under-a-file":
        (tmp / "f").write_text("x")
        return tmp / "f" / "out"
    if kind == "is-a-file":
        (tmp / "f").write_text("x")
        return tmp / "f"
    err = {"read-only": errno.EROFS, "denied": errno.EACCES, "immutable": errno.EPERM, "full": errno.ENOSPC}[kind]
    (tmp / "blocked").mkdir()
    real_open, real_mkdir = os.open, os.mkdir

    def refuse(fn):
        def call(path, *a, **k):
            if str(path).startswith(str(tmp / "blocked")):
                raise OSError(err, os.strerror(err), str(path))
            return fn(path, *a, **k)

        return call

    mp.setattr(os, "open", refuse(real_open))
    mp.setattr(os, "mkdir", refuse(real_mkdir))
    return tmp / "blocked" / "out"


_WHY = {"under-a-file": "a part of its folder path is a file", "is-a-file": "is a file", "read-only": "read-only",
        "denied": "permission denied", "immutable": "permission denied", "full": "no space left"}


def _marker(tmp: Path):
    def run(*a, **k):
        (tmp / MARKER).write_text("the work ran")
        raise AssertionError("the work ran before the output was checked")

    return run


def _cli_train_out(kind: str):
    def make(tmp, mp):
        import cos3d.readers

        scene = _scannet(tmp / "s")
        out = _blocked(kind, tmp, mp)
        import cos3d.pipeline.runner

        for mod in (cos3d.readers, cos3d.pipeline.runner):  # nothing is read before --out is checked
            mp.setattr(mod, "load_scene", _marker(tmp))
        return ["train", "--scene", str(scene), "--out", str(out), "--fast"], ["--out", str(out), _WHY[kind]]

    return make


def _cli_train_default_out_blocked(tmp, mp):
    """Without --out the run goes to ./runs/<scene>: checked (and locked) inside train, before loading."""
    import cos3d.readers

    scene = _scannet(tmp / "s")
    mp.chdir(tmp)
    (tmp / "runs").write_text("a file where the runs folder should be")
    import cos3d.pipeline.runner

    for mod in (cos3d.readers, cos3d.pipeline.runner):
        mp.setattr(mod, "load_scene", _marker(tmp))
    return ["train", "--scene", str(scene), "--fast"], ["--out", "runs/s", "a part of its folder path is a file"]


def _cli_export_out(kind: str):
    def make(tmp, mp):
        import cos3d

        out = _blocked(kind, tmp, mp)
        mp.setattr(cos3d, "load", _marker(tmp))  # the run is not even opened
        return ["export", "--run", str(tmp / "run"), "--out", str(out)], ["--out", str(out), _WHY[kind]]

    return make


def _cli_export_spz_version(tmp, mp):
    import cos3d

    mp.setattr(cos3d, "load", _marker(tmp))  # checked before the run is opened
    return ["export", "--run", str(tmp / "run"), "--spz-version", "5"], ["--spz-version 5", "choose 4 (current) or 3"]


def _cli_query_out(flag: str, kind: str):
    def make(tmp, mp):
        import cos3d

        out = _blocked(kind, tmp, mp)
        if flag == "--ply-out":
            out = out / "sel.ply" if kind not in ("is-a-file", "under-a-file") else out
        mp.setattr(cos3d, "load", _marker(tmp))
        why = {"is-a-file": "is a file"}
        if flag == "--ply-out" and kind == "under-a-file":
            why["under-a-file"] = "is a file, not a folder"
        return ["query", "mug", "--run", str(tmp / "run"), flag, str(out)], [flag, str(out), why.get(kind, _WHY[kind])]

    return make


def _cli_query_ply_out_folder(tmp, mp):
    import cos3d

    (tmp / "d").mkdir()
    mp.setattr(cos3d, "load", _marker(tmp))
    return ["query", "mug", "--run", str(tmp / "run"), "--ply-out", str(tmp / "d")], ["--ply-out", "is a folder"]


def _cli_prepare_tabletop_out(kind: str):
    def make(tmp, mp):
        import cos3d.tabletop.generate as gen

        out = _blocked(kind, tmp, mp)
        mp.setattr(gen, "_setup", _marker(tmp))  # nothing is rendered
        expect = ["--out", _WHY[kind]] if kind != "is-a-file" else ["--out", "exists and is not a folder"]
        return ["prepare", "tabletop", "--out", str(out), "--views", "4"], expect

    return make


def _sens(tmp: Path) -> Path:
    from cos3d.readers.sens import write_sens

    K = np.array([[45.0, 0, 19.5], [0, 45.0, 14.5], [0, 0, 1]])
    return write_sens(tmp / "scan.sens", [np.eye(4)], [np.zeros((H, W, 3), np.uint8)], [np.zeros((H, W), np.uint16)],
                      intrinsic_color=K, intrinsic_depth=K, color_size=(W, H), depth_size=(W, H))  # fmt: skip


def _cli_prepare_scannet_out(kind: str):
    def make(tmp, mp):
        sens = _sens(tmp)
        out = _blocked(kind, tmp, mp)
        return ["prepare", "scannet", "--sens", str(sens), "--out", str(out)], ["--out", _WHY[kind]]

    return make


def _cli_prepare_masks_cache(kind: str):
    def make(tmp, mp):
        import cos3d.readers

        scene = _scannet(tmp / "s")
        out = _blocked(kind, tmp, mp)
        mp.setattr(cos3d.readers, "load_scene", _marker(tmp))  # the scene is not even read
        return ["prepare", "masks", "--scene", str(scene), "--cache", str(out), "--masks", "dataset",
                "--embedder", "labels", "--no-progress"], ["--cache", str(out), _WHY[kind]]  # fmt: skip

    return make


def _cli_train_mask_cache_blocked(kind: str):
    """The 2D cache (by default inside the scene folder: a read-only scene) is checked before stage 0."""

    def make(tmp, mp):
        import cos3d.pipeline.recon
        import cos3d.pipeline.stages

        scene = _scannet(tmp / "s")
        out = _blocked(kind, tmp, mp)
        for mod in (cos3d.pipeline.recon, cos3d.pipeline.stages):  # stage 0 never starts
            mp.setattr(mod, "reconstruct", _marker(tmp))
        return ["train", "--scene", str(scene), "--out", str(tmp / "run"), "--mask-cache", str(out), "--fast",
                "--no-progress"], ["--mask-cache", str(out), _WHY[kind]]  # fmt: skip

    return make


def _write_eperm(where: str):
    def make(tmp, mp):
        from cos3d.core.atomic import write_json

        if where == "replace":
            _fail_os(mp, "replace", errno.EPERM)  # chattr +i on the file being replaced
        else:
            _fail_os(mp, "mkdir", errno.EPERM)  # an immutable parent folder
        return (lambda: write_json(tmp / "out" / "run.json", {})), [
            f"cannot write {tmp / 'out' / 'run.json'}", "permission denied"]

    return make


def _write_atomic_dir_eperm(tmp, mp):
    from cos3d.core.atomic import atomic_dir

    def call():
        with atomic_dir(tmp / "blocked" / "scene", flag="--out"):
            raise AssertionError("the block ran")

    _blocked("immutable", tmp, mp)
    return call, ["--out", "blocked/scene", "permission denied"]


def _ensure_folder_eexist(tmp, mp):
    from cos3d.core.atomic import ensure_output_folder

    _fail_os(mp, "mkdir", errno.EEXIST)  # a file appeared where the folder goes
    return (lambda: ensure_output_folder(tmp / "new" / "out", "--out")), [
        "--out", "a part of its folder path is a file"]


# ------------------------------------------------------------------------- one writer per run folder
_held_fds: list[int] = []


def _hold_lock(run: Path, pid: str = "4242") -> None:
    """Hold ``run``'s writer lock on a separate open file, as another process would (flock locks
    belong to open files), with ``pid`` written where the holder's PID goes."""
    import fcntl

    from cos3d.pipeline.runlock import LOCK_NAME

    run.mkdir(parents=True, exist_ok=True)
    fd = os.open(run / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{pid} train\n".encode() if pid else b"")
    _held_fds.append(fd)


def _release_locks(tmp: Path) -> None:
    while _held_fds:
        os.close(_held_fds.pop())


def _cli_train_locked(extra: tuple[str, ...]):
    def make(tmp, mp):
        import cos3d.readers

        scene = _scannet(tmp / "s")
        _run_json(tmp, scene=str(scene.resolve()))
        _hold_lock(tmp / "run")
        import cos3d.pipeline.runner

        for mod in (cos3d.readers, cos3d.pipeline.runner):
            mp.setattr(mod, "load_scene", _marker(tmp))
        return ["train", "--scene", str(scene), "--out", str(tmp / "run"), "--fast", *extra], [
            f"--out {tmp / 'run'} is being written by process 4242", "wait for it to finish"]

    return make


def _check_locked_untouched(tmp: Path) -> None:
    _release_locks(tmp)
    _no_marker(tmp)
    assert sorted(p.name for p in (tmp / "run").iterdir()) == [".cos3d-lock", "run.json"]


def _lock_in_process(tmp, mp):
    from cos3d.pipeline.run_folder import writer_lock

    _hold_lock(tmp / "run", pid="")

    def call():
        with writer_lock(tmp / "run"):
            raise AssertionError("got a lock another open file holds")

    return call, ["is being written by another process", "write to another folder"]


# ----------------------------------------------------------------------- interrupted runs and Ctrl-C
def _cli_train_over_checkpoint(which: str):
    """A run killed (-9) in stage 0 or 1 keeps its checkpoint; a re-run without --resume says so."""

    def make(tmp, mp):
        scene = _scannet(tmp / "s")
        run = _run_json(tmp, scene=str(scene.resolve()), stages={"recon": {"done": which == "instance",
                                                                            "running": which == "recon"}})
        ck = run / "recon" / "checkpoint.pt" if which == "recon" else run / "checkpoints" / "instance.pt"
        ck.parent.mkdir(parents=True)
        ck.write_bytes(b"work of an hour")
        return ["train", "--scene", str(scene), "--out", str(run), "--fast"], [
            f"holds an interrupted run: checkpoint {ck} exists", "continue it with --resume", "--restart"]

    return make


def _checkpoints_kept(tmp: Path) -> None:
    kept = [p.read_bytes() for p in (tmp / "run").rglob("*.pt")]
    assert kept == [b"work of an hour"], kept


def _cli_interrupt_at(where: str):
    def make(tmp, mp):
        import cos3d.cli

        def interrupt(*a, **k):
            raise KeyboardInterrupt

        if where == "start-up":
            mp.setattr(cos3d.cli, "build_parser", interrupt)
        else:
            import cos3d.pipeline.runner

            mp.setattr(cos3d.pipeline.runner, "load_scene", interrupt)  # where training reads the scene
        scene = _scannet(tmp / "s")
        return ["train", "--scene", str(scene), "--out", str(tmp / "run")], ["cos3d train: interrupted"]

    return make


def _nothing_at(name: str) -> Callable[[Path], None]:
    def check(tmp: Path) -> None:
        assert not (tmp / name).exists(), f"{name} was created"

    return check


def _cli_bad_choice(argv: list[str], flag: str):
    """A flag given a value outside its choices: argparse's error, as one line naming the flag."""
    def make(tmp, mp):
        return [a.replace("TMP", str(tmp)) for a in argv], [f"argument {flag}: invalid choice", "--help"]

    return make


def _cli_prepare_video_loop_keyframes(tmp, mp):
    (tmp / "walk.mp4").write_bytes(b"")  # refused on the flag before the file is opened
    return (["prepare", "video", str(tmp / "walk.mp4"), "--out", str(tmp / "s"), "--loop-keyframes", "-1"],
            ["--loop-keyframes", "0 or more", "-1"])


def _cli_prepare_tabletop_include(tmp, mp):
    return (["prepare", "tabletop", "--out", str(tmp / "t"), "--views", "4", "--include", "no_such_thing"],
            ["--include", "no_such_thing", "known:"])


def _cli_train_scene_missing(tmp, mp):
    return ["train", "--scene", str(tmp / "nope"), "--out", str(tmp / "run")], ["scene", "not found"]


def _cli_train_scene_malformed(tmp, mp):
    (tmp / "s").mkdir()
    (tmp / "s" / "readme.txt").write_text("not a scene")
    return ["train", "--scene", str(tmp / "s"), "--out", str(tmp / "run")], ["unknown scene layout"]


def _cli_train_foreign_out(tmp, mp):
    scene = _scannet(tmp / "s")
    (tmp / "mine").mkdir()
    (tmp / "mine" / "thesis.tex").write_text("years of work")
    return ["train", "--scene", str(scene), "--out", str(tmp / "mine")], ["--out", "is not a cos3d run folder"]


def _foreign_untouched(tmp: Path) -> None:
    assert sorted(p.name for p in (tmp / "mine").iterdir()) == ["thesis.tex"]


def _cli_eval_dev_absent(tmp, mp):
    import cos3d.commands.eval as ev

    (tmp / "run").mkdir()
    mp.setattr(ev, "_tabletop", _marker(tmp))
    return ["eval", "tabletop", "--run", str(tmp / "run"), "--prompts", "dev", "--absent", "unicorn"], [
        "--absent has no effect with --prompts dev", "--prompts eval"]


def _cli_eval_corrupt_run(tmp, mp):
    run = tmp / "run"
    run.mkdir()
    (run / "run.json").write_text("{ not json")
    return ["eval", "tabletop", "--run", str(run)], ["run.json: unreadable run record"]


def _cli_query_corrupt_run(tmp, mp):
    run = tmp / "run"
    run.mkdir()
    (run / "run.json").write_text('{"format": "cos3d-run", "version": 2, "scene": 7}')
    return ["query", "mug", "--run", str(run)], ["run.json: unreadable run record", "'scene' must be a path string"]


# ------------------------------------------------------------------------------- splat files
def _write_ply_nonfinite(which: str):
    def make(tmp, mp):
        from cos3d.data.ply import write_ply

        g = _gaussians(16)
        extra = None
        if which == "means":
            g.means[4, 2] = float("nan")
            expect = ["write_ply", "1 of 16 Gaussians have NaN/inf values (rows 4; columns z)", "nothing was written"]
        elif which == "feature":
            g.features["instance_l"] = torch.zeros(16, 2)
            g.features["instance_l"][[1, 7, 8, 9, 10, 12], 0] = float("inf")
            expect = ["6 of 16 Gaussians", "rows 1, 7, 8, 9, 10, …", "columns feat_instance_l_0"]
        else:
            extra = {"score": np.where(np.arange(16) == 3, np.nan, 0.5)}
            expect = ["1 of 16 Gaussians", "rows 3", "columns score"]
        return (lambda: write_ply(tmp / "out" / "g.ply", g, extra_columns=extra)), expect

    return make


def _spz_header(n: int, degree: int = 0, version: int = 3) -> bytes:
    import struct

    return struct.pack("<IIIBBBB", 0x5053474E, version, n, degree, 12, 0, 0)


def _spz_bomb(tmp, mp):
    import gzip

    body = _spz_header(1 << 24) + bytes(1 << 20)  # 16M splats announced; 1 MiB of zeros gzip to ~1 KiB
    (tmp / "bomb.spz").write_bytes(gzip.compress(body))
    from cos3d.data.ply import read_gaussians

    return (lambda: read_gaussians(tmp / "bomb.spz")), ["bomb.spz: .spz header announces 16,777,216 splats", "refused"]


def _spz_count_over_limit(tmp, mp):
    import gzip

    (tmp / "huge.spz").write_bytes(gzip.compress(_spz_header(0xFFFFFFF0)))
    from cos3d.data.ply import read_spz

    return (lambda: read_spz(tmp / "huge.spz")), ["huge.spz: .spz header announces 4,294,967,280 splats", "refused"]


def _spz_not_gzip(tmp, mp):
    (tmp / "x.spz").write_bytes(b"plain bytes, not gzip")
    from cos3d.data.ply import read_spz

    return (lambda: read_spz(tmp / "x.spz")), ["x.spz: not a gzip-compressed .spz file"]


def _spz_truncated_stream(tmp, mp):
    import gzip

    data = gzip.compress(_spz_header(100) + bytes(100 * 19))
    (tmp / "t.spz").write_bytes(data[: len(data) // 2])
    from cos3d.data.ply import read_spz

    return (lambda: read_spz(tmp / "t.spz")), ["t.spz: "]


def _spz_short_body(tmp, mp):
    import gzip

    (tmp / "s.spz").write_bytes(gzip.compress(_spz_header(100) + bytes(50)))
    from cos3d.data.ply import read_spz

    return (lambda: read_spz(tmp / "s.spz")), ["s.spz: .spz body is 50 bytes; 100 splats of degree 0 need 2000"]


def _compressed_ply_count(tmp, mp):
    from cos3d.data.ply import read_ply

    header = ("ply\nformat binary_little_endian 1.0\nelement chunk 1000000\n"
              + "".join(f"property float {p}\n" for p in ("min_x", "min_y", "min_z", "max_x", "max_y", "max_z"))
              + "element vertex 256000000\nproperty uint packed_position\nproperty uint packed_rotation\n"
              "property uint packed_scale\nproperty uint packed_color\nend_header\n")  # fmt: skip
    (tmp / "c.compressed.ply").write_bytes(header.encode() + bytes(4096))
    return (lambda: read_ply(tmp / "c.compressed.ply")), ["c.compressed.ply: "]


def _cli_train_gaussians_bomb(tmp, mp):
    import gzip

    scene = _scannet(tmp / "s")
    (tmp / "bomb.spz").write_bytes(gzip.compress(_spz_header(1 << 24) + bytes(1 << 20)))
    return ["train", "--scene", str(scene), "--out", str(tmp / "run"), "--gaussians", str(tmp / "bomb.spz"),
            "--stage", "recon"], ["bomb.spz", "refused"]  # fmt: skip

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
    # issue 25: a scene's files stay inside its folder (every reader; symlinks resolved)
    Case("nerfstudio-file-path-dotdot", _ns_file_path(_outside_rel)),
    Case("nerfstudio-file-path-absolute", _ns_file_path(_outside_abs)),
    Case("nerfstudio-file-path-etc-passwd", _ns_file_path(lambda tmp: "../../../../../../../../etc/passwd")),
    Case("nerfstudio-file-path-no-suffix-outside", _ns_file_path(_outside_no_suffix)),
    Case("nerfstudio-file-path-nul-byte", _ns_nul),
    Case("nerfstudio-image-symlink-out", _ns_symlinked_image),
    Case("nerfstudio-images-folder-symlink-out", _ns_symlinked_folder),
    Case("nerfstudio-depth-file-path-outside", _ns_depth_outside),
    Case("nerfstudio-ply-file-path-absolute", _ns_ply_outside),
    Case("nerfstudio-trusted-still-refuses-nul", _trusted_still_refuses_nul),
    Case("nerfstudio-transforms-json-symlink-out", _ns_sidecar_link("transforms.json")),
    Case("nerfstudio-splits-json-symlink-out", _ns_sidecar_link("splits.json")),
    Case("colmap-image-name-dotdot", _colmap_name("dotdot")),
    Case("colmap-image-name-dotdot-binary", _colmap_name("binary")),
    Case("colmap-image-name-absolute", _colmap_name("absolute")),
    Case("colmap-image-symlink-out", _colmap_name("symlink")),
    Case("colmap-model-file-symlink-out", _colmap_name("model")),
    Case("scannet-color-symlink-out", _scannet_link("color", "1.png")),
    Case("scannet-depth-symlink-out", _scannet_link("depth", "2.png")),
    Case("scannet-instance-symlink-out", _scannet_link("instance", "0.png")),
    Case("scannet-pose-symlink-out", _scannet_link("pose", "1.txt")),
    Case("scannet-intrinsic-symlink-out", _scannet_link("intrinsic", "intrinsic_color.txt")),
    Case("scannet-labels-json-symlink-out", _scannet_link("", "labels.json")),
    Case("tabletop-eval-prompts-symlink-out", _tabletop_sidecar_link("eval_prompts.json")),
    Case("tabletop-meta-json-symlink-out", _tabletop_sidecar_link("meta.json")),
    Case("scannet-pose-folder-symlink-out", _scannet_folder_link),
    Case("scannet-duplicate-stems-named", _scannet_duplicate_stems),
    Case("scene-duplicate-frame-names-named", _duplicate_frame_names),
    Case("run-json-mask-cache-outside", _run_json_cache("/etc", ["run.json: stages.masks.cache '/etc'",
                                                                 "outside the run folder and the scene folder",
                                                                 "--mask-cache"])),
    Case("run-json-mask-cache-dotdot", _run_json_cache(lambda tmp: str(tmp / "run" / ".." / ".."),
                                                       ["stages.masks.cache", "outside the run folder"])),
    Case("run-json-mask-cache-not-text", _run_json_cache(["x"], ["unreadable run record",
                                                                 "stages.masks.cache must be a path string"])),
    Case("run-json-mask-cache-nul", _run_json_cache("a\x00b", ["stages.masks.cache must be a path string"])),
    Case("run-json-scene-not-text", _run_json_scene_not_text),
    # write failures: one line naming the flag and the path, before any work
    *[Case(f"cli-train-out-{k}", _cli_train_out(k), _no_marker, cli=True)
      for k in ("under-a-file", "is-a-file", "read-only", "denied", "immutable", "full")],
    Case("cli-train-default-out-under-a-file", _cli_train_default_out_blocked, _no_marker, cli=True),
    *[Case(f"cli-export-out-{k}", _cli_export_out(k), _no_marker, cli=True)
      for k in ("under-a-file", "is-a-file", "read-only", "denied", "immutable")],
    *[Case(f"cli-query-masks-out-{k}", _cli_query_out("--masks-out", k), _no_marker, cli=True)
      for k in ("under-a-file", "is-a-file", "read-only", "immutable")],
    *[Case(f"cli-query-ply-out-{k}", _cli_query_out("--ply-out", k), _no_marker, cli=True)
      for k in ("under-a-file", "read-only", "denied", "immutable")],
    Case("cli-query-ply-out-is-a-folder", _cli_query_ply_out_folder, _no_marker, cli=True),
    Case("cli-eval-out-immutable", lambda tmp, mp: _cli_eval_out_kind(tmp, mp, "immutable"), _no_marker, cli=True),
    Case("cli-eval-out-denied", lambda tmp, mp: _cli_eval_out_kind(tmp, mp, "denied"), _no_marker, cli=True),
    *[Case(f"cli-prepare-tabletop-out-{k}", _cli_prepare_tabletop_out(k), _no_marker, cli=True)
      for k in ("under-a-file", "is-a-file", "read-only", "immutable")],
    *[Case(f"cli-prepare-scannet-out-{k}", _cli_prepare_scannet_out(k), _nothing_at("blocked/out"), cli=True)
      for k in ("under-a-file", "read-only", "immutable")],
    *[Case(f"cli-prepare-masks-cache-{k}", _cli_prepare_masks_cache(k), _no_marker, cli=True)
      for k in ("under-a-file", "read-only", "immutable")],
    *[Case(f"cli-train-mask-cache-{k}", _cli_train_mask_cache_blocked(k), _no_marker, cli=True)
      for k in ("read-only", "denied")],
    Case("write-eperm-at-replace", _write_eperm("replace"), _nothing_left_in("out")),
    Case("write-eperm-creating-folder", _write_eperm("mkdir"), _nothing_at("out")),
    Case("write-atomic-dir-eperm", _write_atomic_dir_eperm, _nothing_at("blocked/scene")),
    Case("write-folder-eexist", _ensure_folder_eexist, _nothing_at("new")),
    # one writer per run folder
    Case("cli-train-run-locked", _cli_train_locked(()), _check_locked_untouched, cli=True),
    Case("cli-train-resume-run-locked", _cli_train_locked(("--resume",)), _check_locked_untouched, cli=True),
    Case("cli-train-restart-run-locked", _cli_train_locked(("--restart",)), _check_locked_untouched, cli=True),
    Case("run-lock-held-by-another-open-file", _lock_in_process, _release_locks),
    # interrupted runs: a kept checkpoint is never discarded silently; Ctrl-C is one line
    Case("cli-train-over-stage0-checkpoint", _cli_train_over_checkpoint("recon"), _checkpoints_kept, cli=True),
    Case("cli-train-over-stage1-checkpoint", _cli_train_over_checkpoint("instance"), _checkpoints_kept, cli=True),
    Case("cli-interrupt-at-start-up", _cli_interrupt_at("start-up"), _nothing_at("run"), cli=True, rc=130),
    Case("cli-interrupt-loading-the-scene", _cli_interrupt_at("load"), _nothing_at("run"), cli=True, rc=130),
    Case("cli-train-scene-missing", _cli_train_scene_missing, _nothing_at("run"), cli=True),
    Case("cli-export-spz-version-unknown", _cli_export_spz_version, _no_marker, cli=True),
    Case("cli-train-preset-unknown", _cli_bad_choice(["train", "--scene", "TMP/s", "--out", "TMP/run", "--preset",
                                                     "quick"], "--preset"), _nothing_at("run"), cli=True),
    Case("cli-train-embedder-unknown", _cli_bad_choice(["train", "--scene", "TMP/s", "--out", "TMP/run", "--embedder",
                                                       "clip-gap"], "--embedder"), _nothing_at("run"), cli=True),
    Case("cli-query-branch-unknown", _cli_bad_choice(["query", "mug", "--run", "TMP/run", "--branch", "3d"],
                                                     "--branch"), cli=True),
    Case("cli-query-concept-segmenter-unknown", _cli_bad_choice(
        ["query", "mug", "--run", "TMP/run", "--branch", "2d", "--concept-segmenter", "sam2"], "--concept-segmenter"),
        cli=True),
    Case("cli-train-capture-camera-model-unknown", _cli_bad_choice(
        ["train", "--video", "TMP/walk.mp4", "--out", "TMP/run", "--capture-camera-model", "FISHEYE"],
        "--capture-camera-model"), _nothing_at("run"), cli=True),
    Case("cli-prepare-video-loop-keyframes-negative", _cli_prepare_video_loop_keyframes, _nothing_at("s"), cli=True),
    Case("cli-prepare-tabletop-include-unknown", _cli_prepare_tabletop_include, _nothing_at("t"), cli=True),
    Case("cli-train-scene-malformed", _cli_train_scene_malformed, _nothing_at("run"), cli=True),
    Case("cli-train-out-foreign-folder", _cli_train_foreign_out, _foreign_untouched, cli=True),
    # flags ignored in a mode are refused; corrupt runs leave nothing behind
    Case("cli-eval-dev-prompts-with-absent", _cli_eval_dev_absent, _no_marker, cli=True),
    Case("cli-eval-corrupt-run", _cli_eval_corrupt_run, _nothing_at("run/eval"), cli=True),
    Case("cli-query-run-json-scene-not-text", _cli_query_corrupt_run, cli=True),
    # splat files: never written with NaN/inf, read within bounded memory
    Case("write-ply-nan-in-means", _write_ply_nonfinite("means"), _nothing_at("out/g.ply")),
    Case("write-ply-inf-in-feature", _write_ply_nonfinite("feature"), _nothing_at("out/g.ply")),
    Case("write-ply-nan-in-extra-column", _write_ply_nonfinite("extra"), _nothing_at("out/g.ply")),
    Case("spz-gzip-bomb", _spz_bomb),
    Case("spz-count-over-limit", _spz_count_over_limit),
    Case("spz-not-gzip", _spz_not_gzip),
    Case("spz-truncated-stream", _spz_truncated_stream),
    Case("spz-short-body", _spz_short_body),
    Case("compressed-ply-count-beyond-file", _compressed_ply_count),
    Case("cli-train-gaussians-spz-bomb", _cli_train_gaussians_bomb, cli=True),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line(case: Case, tmp_path, monkeypatch, capsys):
    built, expected = case.make(tmp_path, monkeypatch)
    if case.cli:
        from cos3d.cli import entrypoint

        capsys.readouterr()
        try:
            rc = entrypoint(built)
        except SystemExit as e:  # argparse's errors (a bad choice, a missing argument) exit from parse_args
            rc = e.code
        err = capsys.readouterr().err
        assert rc == case.rc, err
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
    from cos3d.testing.vision import write_synthetic_scene

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
    from cos3d.core.atomic import atomic_path, write_json
    from cos3d.data.ply import write_ply

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
