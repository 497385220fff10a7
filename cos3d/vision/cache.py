"""Per-view cache of 2D model outputs: masks (bit-packed, compressed) + embeddings (fp16).

Layout of a cache folder::

    CACHE/manifest.json       {"format", "models_key", "provider": {name, model_id, params},
                               "embedder": {name, model_id, params, dim}, "levels", "views": [...]}
    CACHE/views/<frame>.npz   one view: key, models_key, image_hash, shape, packed masks, level, score,
                              box, source_id, is_part, names (JSON), emb [M, D] float16

A view's ``key`` hashes the image *content* with the provider's and embedder's ``model_id`` and
``params``: a different image, model or setting is a miss and the view is recomputed. Every file is
written atomically (:mod:`cos3d.core.atomic`), so an interrupted run resumes where it stopped.

A view file that cannot be read (truncated, garbage, other models than the manifest, deleted) is
treated as missing: :func:`load_view` drops it from the manifest's ``views`` before raising (so a
resumed run sees the masks stage unfinished and redoes it), and :func:`prepare_masks` recomputes it
with a printed note.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from cos3d.core.atomic import atomic_path, write_json
from cos3d.core.errors import Cos3dError
from cos3d.core.paths import safe_name
from cos3d.vision.base import Embedder, MaskProvider
from cos3d.vision.masks import LEVELS, MaskSet, pack_masks, unpack_masks

if TYPE_CHECKING:  # pragma: no cover
    from cos3d.data.scene import Frame, Scene

CACHE_FORMAT = 1
MANIFEST = "manifest.json"


@dataclass
class PrepareStats:
    """What :func:`prepare_masks` did."""

    total: int = 0
    """Views asked for."""
    done: int = 0
    """Views computed in this run (misses, including recomputed corrupt files)."""
    skipped: int = 0
    """Views already cached with the same key (hits)."""
    corrupt: int = 0
    """Cached files that could not be read and were recomputed (counted in ``done`` too)."""
    masks: int = 0
    """Masks written in this run."""
    seconds: float = 0.0
    """Wall time of the whole call."""
    compute_seconds: float = 0.0
    """Wall time of the computed views (read image, masks, embeddings, write; misses only)."""

    @property
    def views_per_s(self) -> float:
        """Computed views per second of their wall time (0 when nothing was computed)."""
        return self.done / self.compute_seconds if self.compute_seconds > 0 else 0.0

    def add(self, out: "ViewOutcome") -> None:
        """Count one view's outcome."""
        if out.computed:
            self.done += 1
            self.corrupt += int(out.corrupt)
            self.masks += out.masks
            self.compute_seconds += out.seconds
        else:
            self.skipped += 1

    def summary(self) -> str:
        rate = f", {self.views_per_s:.2f} views/s" if self.done else ""
        extra = f", {self.corrupt} corrupt recomputed" if self.corrupt else ""
        return (
            f"{self.done} views done, {self.skipped} skipped (cached){extra}, {self.masks} masks, "
            f"{self.seconds:.1f} s{rate}"
        )


def _ident(obj: MaskProvider | Embedder) -> dict[str, Any]:
    d = {"name": obj.name, "model_id": obj.model_id, "params": obj.params}
    return json.loads(json.dumps(d, sort_keys=True, default=str))


def models_key(provider: MaskProvider, embedder: Embedder) -> str:
    """Hash of everything but the image that determines a view's cached content."""
    blob = json.dumps(
        {"format": CACHE_FORMAT, "provider": _ident(provider), "embedder": _ident(embedder), "dim": int(embedder.dim)},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def image_hash(image: np.ndarray) -> str:
    """Content hash of an image array (shape, dtype and bytes)."""
    a = np.ascontiguousarray(image)
    h = hashlib.sha256(f"{a.shape}{a.dtype}".encode())
    h.update(a.tobytes())
    return h.hexdigest()[:32]


def view_key(img_hash: str, mkey: str) -> str:
    return hashlib.sha256(f"{img_hash}:{mkey}".encode()).hexdigest()[:32]


def view_path(cache_dir: str | Path, frame_name: str) -> Path:
    """The file of one view (frame names with unsafe characters are escaped, with a hash for uniqueness)."""
    return Path(cache_dir) / "views" / f"{safe_name(frame_name)}.npz"


def load_manifest(cache_dir: str | Path) -> dict[str, Any]:
    """The cache's manifest (raises :class:`Cos3dError` when absent or unreadable)."""
    p = Path(cache_dir) / MANIFEST
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise Cos3dError(f"{cache_dir}: no mask cache here (no {MANIFEST}); run `cos3d prepare masks` first") from None
    except (OSError, ValueError) as e:
        raise Cos3dError(
            f"{p}: unreadable mask-cache manifest ({type(e).__name__}); delete it and run again with --resume "
            "(or `cos3d prepare masks` on this cache): cached views that are still valid are kept"
        ) from None


# ---- one view --------------------------------------------------------------------------------------
def save_view(path: Path, *, key: str, mkey: str, img_hash: str, masks: MaskSet, emb: np.ndarray) -> None:
    """Write one view atomically."""
    m, (h, w) = len(masks), masks.shape
    emb = np.asarray(emb)
    assert emb.ndim == 2 and emb.shape[0] == m, (emb.shape, m)
    with atomic_path(path) as tmp:
        np.savez_compressed(
            tmp,
            key=np.array(key),
            models_key=np.array(mkey),
            image_hash=np.array(img_hash),
            shape=np.array([m, h, w], np.int64),
            masks=pack_masks(masks.masks),
            level=masks.level,
            score=masks.score,
            box=masks.box,
            source_id=masks.source_id,
            is_part=masks.is_part,
            names=np.array(json.dumps(masks.names)),
            emb=emb.astype(np.float16),
        )


def read_view(path: Path) -> tuple[dict[str, str], MaskSet, np.ndarray]:
    """``(header {key, models_key, image_hash}, MaskSet, emb float16 [M, D])``; raises on any corruption."""
    with np.load(path, allow_pickle=False) as f:
        header = {k: str(f[k]) for k in ("key", "models_key", "image_hash")}
        m, h, w = (int(v) for v in f["shape"])
        masks = unpack_masks(f["masks"], m, h, w)
        names = json.loads(str(f["names"]))
        ms = MaskSet(
            masks=masks,
            level=f["level"],
            score=f["score"],
            box=f["box"],
            names=names,
            source_id=f["source_id"],
            is_part=f["is_part"],
        )
        emb = np.asarray(f["emb"], np.float16)
    if emb.ndim != 2 or emb.shape[0] != m:
        raise ValueError(f"embeddings {emb.shape} do not match {m} masks")
    return header, ms, emb


def _frame_name(frame: "Frame | str") -> str:
    return frame if isinstance(frame, str) else frame.name


def _forget_view(cache_dir: Path, name: str) -> bool:
    """Drop ``name`` from the manifest's ``views`` (the list a resumed run trusts); False if that failed."""
    man_path = Path(cache_dir) / MANIFEST
    try:
        man = json.loads(man_path.read_text())
        if name in man.get("views", []):
            man["views"] = [v for v in man["views"] if v != name]
            write_json(man_path, man)
        return True
    except (OSError, ValueError, Cos3dError, AttributeError, TypeError):
        return False


def _missing_view(cache_dir: Path, name: str, problem: str) -> Cos3dError:
    """Mark view ``name`` missing and return the one-line error: ``problem`` (it names the file) and a fix."""
    if _forget_view(cache_dir, name):
        fix = (
            f"it is now marked missing in {Path(cache_dir) / MANIFEST}: run again with --resume (or "
            "`cos3d prepare masks` on this cache) to recompute it"
        )
    else:
        fix = f"delete {Path(cache_dir) / MANIFEST} and run again with --resume to recompute it"
    return Cos3dError(f"{problem}; {fix}")


def load_view(cache_dir: str | Path, frame: "Frame | str") -> tuple[MaskSet, np.ndarray]:
    """``(MaskSet, embeddings [M, D] float16)`` of one cached view.

    Raises :class:`Cos3dError` when the view is missing, corrupt, or was computed with other models
    than the cache's manifest says. Such a view is first dropped from the manifest's ``views``, so the
    fix the message gives (run again with ``--resume``, or ``cos3d prepare masks`` on this cache)
    recomputes it instead of trusting the manifest and failing here again.
    """
    name = _frame_name(frame)
    man = load_manifest(cache_dir)
    p = view_path(cache_dir, name)
    if not p.is_file():
        raise _missing_view(Path(cache_dir), name, f"{p}: view {name!r} is not cached")
    try:
        header, ms, emb = read_view(p)
    except Exception as e:
        raise _missing_view(Path(cache_dir), name, f"{p}: corrupt mask-cache file ({type(e).__name__})") from None
    if header["models_key"] != man.get("models_key"):
        raise _missing_view(
            Path(cache_dir), name, f"{p}: computed with other models/settings than {Path(cache_dir) / MANIFEST} records"
        )
    return ms, emb


# ---- the stage -------------------------------------------------------------------------------------
# The stage is three steps, so that an executor running views elsewhere (cos3d.distributed) writes the
# same cache: the driver opens the manifest (:func:`open_manifest`), each view is one call of
# :func:`process_view` (it writes only that view's file, atomically), and the driver alone records the
# finished views (:func:`close_manifest`). Workers never touch the manifest, so concurrent views are safe.
def manifest_header(provider: MaskProvider, embedder: Embedder) -> dict[str, Any]:
    """The models part of a cache's manifest (JSON-able; what a worker holding the models reports)."""
    return {
        "format": CACHE_FORMAT,
        "models_key": models_key(provider, embedder),
        "provider": _ident(provider),
        "embedder": _ident(embedder),
        "dim": int(embedder.dim),
        "levels": list(LEVELS),
    }


def open_manifest(cache_dir: str | Path, header: dict[str, Any], scene_root: str | Path) -> dict[str, Any]:
    """Write the manifest of a run that starts: ``header`` (:func:`manifest_header`) + the views an
    earlier run with the same models finished. Returns it (``views`` is that earlier list)."""
    from tqdm import tqdm

    man_path = Path(cache_dir) / MANIFEST
    old_views: list[str] = []
    if man_path.is_file():
        try:
            old = json.loads(man_path.read_text())
            if old.get("models_key") == header["models_key"]:
                old_views = list(old.get("views", []))
        except (OSError, ValueError):
            tqdm.write(f"note: {man_path}: unreadable mask-cache manifest; rewriting it", file=sys.stderr)
    manifest = {**header, "scene": str(scene_root), "views": old_views}
    write_json(man_path, manifest)
    return manifest


def close_manifest(cache_dir: str | Path, manifest: dict[str, Any], finished: Iterable[str]) -> None:
    """Record the finished views (plus those the manifest already listed) in the manifest."""
    manifest["views"] = sorted(set(manifest.get("views", [])) | set(finished))
    write_json(Path(cache_dir) / MANIFEST, manifest)


@dataclass
class ViewOutcome:
    """What :func:`process_view` did with one view."""

    name: str
    computed: bool
    """True when the view was computed and written; False when its cached file was a hit."""
    corrupt: bool = False
    """The cached file could not be read (it was recomputed)."""
    masks: int = 0
    """Masks written (0 for a hit)."""
    seconds: float = 0.0
    """Wall time of a computed view (read image, masks, embeddings, write)."""


def process_view(
    frame: "Frame",
    provider: MaskProvider,
    embedder: Embedder,
    cache_dir: str | Path,
    mkey: str | None = None,
    *,
    force: bool = False,
    note: Any = None,
) -> ViewOutcome:
    """Make sure one view is cached: skip it when its file holds the same key, else compute masks and
    embeddings and write the file atomically. ``note(text)`` prints notes (default: tqdm.write to stderr)."""
    t0 = time.perf_counter()
    mkey = mkey or models_key(provider, embedder)
    image = frame.load_image()
    ihash = image_hash(image)
    key = view_key(ihash + provider.frame_key(frame), mkey)
    path = view_path(cache_dir, frame.name)
    corrupt = False
    if path.is_file() and not force:
        try:
            header, _, _ = read_view(path)
            if header["key"] == key:
                return ViewOutcome(frame.name, computed=False)
        except Exception as e:
            if note is None:
                from tqdm import tqdm

                def note(text: str) -> None:
                    tqdm.write(text, file=sys.stderr)

            note(f"note: {path}: corrupt mask-cache file ({type(e).__name__}); recomputing it")
            corrupt = True
    ms = provider.generate(image, frame)
    emb = embedder.embed_masks(image, ms)
    if emb.shape != (len(ms), embedder.dim):
        raise AssertionError(f"{embedder.name} returned {emb.shape} for {len(ms)} masks of width {embedder.dim}")
    save_view(path, key=key, mkey=mkey, img_hash=ihash, masks=ms, emb=emb)
    return ViewOutcome(frame.name, computed=True, corrupt=corrupt, masks=len(ms), seconds=time.perf_counter() - t0)


def prepare_masks(
    scene: "Scene",
    frames: "Iterable[Frame | str] | None",
    provider: MaskProvider,
    embedder: Embedder,
    cache_dir: str | Path,
    progress: bool = True,
    *,
    force: bool = False,
) -> PrepareStats:
    """Fill the per-view cache of ``frames`` (None = every frame of ``scene``), one view after another
    in this process (``cos3d prepare masks --executor ray`` runs the same :func:`process_view` on Ray).

    Views whose file holds the same key are skipped; the others are computed (masks, then
    embeddings) and written atomically, one file per view. A file that cannot be read is recomputed
    with a note on stderr (and counted in ``corrupt``). ``force`` recomputes everything. Shows a tqdm bar (views/s) when ``progress``.
    """
    from tqdm import tqdm

    t_start = time.perf_counter()
    cache_dir = Path(cache_dir)
    frame_list = [scene.frame(f) if isinstance(f, str) else f for f in (scene.frames if frames is None else frames)]
    header = manifest_header(provider, embedder)
    manifest = open_manifest(cache_dir, header, scene.root)

    stats = PrepareStats(total=len(frame_list))
    finished: set[str] = set()
    bar = tqdm(frame_list, unit="view", desc="masks+embeddings", disable=not progress, dynamic_ncols=True)
    for frame in bar:
        out = process_view(frame, provider, embedder, cache_dir, header["models_key"], force=force)
        stats.add(out)
        finished.add(frame.name)
        bar.set_postfix(done=stats.done, skipped=stats.skipped)
    bar.close()
    close_manifest(cache_dir, manifest, finished)
    stats.seconds = time.perf_counter() - t_start
    return stats
