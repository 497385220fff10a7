"""The ``dataset`` mask provider: the instance/part maps a dataset ships, as masks (oracle-2D protocol).

Levels:

- ``l`` — one mask per instance id visible in the view (objects), named by ``scene.labels[id]``;
- ``s`` — one mask per part id visible in the view (named by ``scene.parts[pid].names``,
  ``is_part=True``); an object with no visible part contributes its whole mask instead;
- ``m`` — objects again. The datasets we read have two granularities (objects and parts); SAM's
  medium output is most often a whole object on tabletop-scale scenes, so ``m`` repeats ``l``
  (before perturbation; perturbation draws independently per level, as SAM's errors would).

Regions smaller than ``min_area`` pixels are left out (SAM does not find slivers either).

Perturbation (``perturb`` = strength ``s`` in [0, 1]; 0 = exact maps), drawn per mask from a generator
seeded by ``(seed, frame name)`` so the same view always gets the same errors:

- drop with probability ``0.15 s``;
- erode or dilate (equal odds) with probability ``0.6 s``, by ``1 + round(s · 0.03 · min(H, W) · u)`` px;
- split along a random line through the centroid with probability ``0.15 s`` (masks ≥ 64 px);
- merge with a touching mask of the same level with probability ``0.15 s`` (names joined; the
  merged mask keeps the first mask's ``source_id``).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cos3d.core.errors import Cos3dError
from cos3d.vision.base import MaskProvider
from cos3d.vision.masks import LEVELS, MaskSet, masks_to_boxes

if TYPE_CHECKING:  # pragma: no cover
    from cos3d.data.scene import Frame, Scene


class DatasetMaskProvider(MaskProvider):
    """Masks from the scene's instance (and part) maps, optionally perturbed."""

    name = "dataset"

    def __init__(self, scene: "Scene", *, perturb: float = 0.0, seed: int = 0, min_area: int = 10) -> None:
        if not 0.0 <= float(perturb) <= 1.0:
            raise Cos3dError(f"--perturb must be in [0, 1], got {perturb}")
        if not scene.has_instances:
            missing = [f.name for f in scene.frames if f.instance_path is None][:5]
            raise Cos3dError(
                f"{scene.root}: the dataset mask provider needs instance maps for every frame (missing for {missing}); "
                "use --masks sam2 or --masks classical"
            )
        self.scene = scene
        self.perturb = float(perturb)
        self.seed = int(seed)
        self.min_area = int(min_area)

    @property
    def model_id(self) -> str:
        return "dataset:instance-maps"

    @property
    def params(self) -> dict[str, Any]:
        p: dict[str, Any] = {"min_area": self.min_area, "perturb": self.perturb}
        if self.perturb > 0:
            p["seed"] = self.seed
        # names are part of the output: a relabelled scene must miss the cache
        p["labels"] = zlib.crc32(repr(sorted(self.scene.labels.items())).encode())
        p["parts"] = zlib.crc32(repr(sorted((k, v.names, v.parent) for k, v in self.scene.parts.items())).encode())
        return p

    def frame_key(self, frame: "Frame") -> str:
        """CRC32 of the frame's instance and part map files: the masks are made from them."""
        crc = 0
        for p in (frame.instance_path, frame.part_path):
            if p is not None and Path(p).is_file():
                crc = zlib.crc32(Path(p).read_bytes(), crc)
        return f"{crc:08x}"

    def generate(self, image: np.ndarray, frame: "Frame | None" = None) -> MaskSet:
        """Masks of ``frame`` (required: its instance map is the source; ``image`` only fixes the size)."""
        if frame is None:
            raise Cos3dError("the dataset mask provider reads the frame's instance map: pass frame=")
        inst = frame.load_instance()
        if inst is None:
            raise Cos3dError(f"frame {frame.name} has no instance map; the dataset mask provider needs one")
        h, w = inst.shape
        if image is not None and np.asarray(image).shape[:2] != (h, w):
            raise Cos3dError(
                f"frame {frame.name}: image is {np.asarray(image).shape[:2]} but the instance map is {(h, w)}"
            )
        part = frame.load_part()
        ms = dataset_masks(
            inst,
            part,
            self.scene.labels,
            {k: (v.names, v.parent) for k, v in self.scene.parts.items()},
            min_area=self.min_area,
        )
        if self.perturb > 0:
            rng = np.random.default_rng([self.seed, zlib.crc32(frame.name.encode())])
            ms = perturb_masks(ms, self.perturb, rng)
        return ms


def dataset_masks(
    instance: np.ndarray,
    part: np.ndarray | None,
    labels: dict[int, list[str]],
    parts: dict[int, tuple[list[str], int]],
    *,
    min_area: int = 10,
) -> MaskSet:
    """The exact (unperturbed) dataset masks of one view; see the module docstring for the levels.

    Args:
        instance: int ``[H, W]`` instance ids, 0 = none.
        part: int ``[H, W]`` part ids, 0 = none, or None.
        labels: instance id → names.
        parts: part id → (names, parent instance id).
    """
    h, w = instance.shape
    masks: list[np.ndarray] = []
    level: list[int] = []
    names: list[list[str]] = []
    sid: list[int] = []
    is_part: list[bool] = []

    def add(m: np.ndarray, lv: int, nm: list[str], i: int, p: bool) -> None:
        masks.append(m)
        level.append(lv)
        names.append(list(nm))
        sid.append(int(i))
        is_part.append(p)

    ids = [int(i) for i in np.unique(instance) if i != 0]
    obj = {}
    for i in ids:
        m = instance == i
        if m.sum() >= min_area:
            obj[i] = m
    part_ids = [] if part is None else [int(p) for p in np.unique(part) if p != 0]
    parts_of: dict[int, list[tuple[int, np.ndarray]]] = {}
    for p in part_ids:
        m = part == p
        if m.sum() < min_area:
            continue
        parent = parts[p][1] if p in parts else None
        if parent is None:  # unknown part: attach to the instance it mostly overlaps
            under = instance[m]
            under = under[under != 0]
            parent = int(np.bincount(under).argmax()) if under.size else 0
        parts_of.setdefault(int(parent), []).append((p, m))
    for i, m in obj.items():
        nm = labels.get(i) or []
        for lv in (LEVELS.index("l"), LEVELS.index("m")):
            add(m, lv, nm, i, False)
        if parts_of.get(i):
            for p, pm in parts_of[i]:
                add(pm, LEVELS.index("s"), parts[p][0] if p in parts else [], p, True)
        else:
            add(m, LEVELS.index("s"), nm, i, False)
    if not masks:
        return MaskSet.empty(h, w, with_names=True)
    arr = np.stack(masks)
    order = np.argsort(np.asarray(level, np.int8), kind="stable")  # s, m, l
    return MaskSet(
        masks=arr[order],
        level=np.asarray(level, np.int8)[order],
        score=np.ones(len(order), np.float32),
        box=masks_to_boxes(arr)[order],
        names=[names[k] for k in order],
        source_id=np.asarray(sid, np.int64)[order],
        is_part=np.asarray(is_part, bool)[order],
    )


def perturb_masks(ms: MaskSet, strength: float, rng: np.random.Generator) -> MaskSet:
    """Imitate SAM's errors on exact masks (see the module docstring). Deterministic given ``rng``."""
    from scipy import ndimage

    if strength <= 0 or len(ms) == 0:
        return ms
    s = float(np.clip(strength, 0.0, 1.0))
    h, w = ms.shape
    max_r = s * 0.03 * min(h, w)
    out_m: list[np.ndarray] = []
    out_l: list[int] = []
    out_n: list[list[str]] = []
    out_id: list[int] = []
    out_p: list[bool] = []
    out_s: list[float] = []
    names = ms.names if ms.names is not None else [[] for _ in range(len(ms))]
    merged_into: set[int] = set()
    for k in range(len(ms)):
        # one draw per decision, in a fixed order, so results depend only on the seed
        u_drop, u_morph, u_dir, u_rad, u_split, u_ang, u_merge = rng.random(7)
        if k in merged_into or u_drop < 0.15 * s:
            continue
        m = ms.masks[k].copy()
        nm = list(names[k])
        if u_merge < 0.15 * s:
            ring = ndimage.binary_dilation(m, iterations=2) & ~m
            cands = [
                j
                for j in range(k + 1, len(ms))
                if ms.level[j] == ms.level[k]
                and j not in merged_into
                and (ring & ms.masks[j]).any()
                and not (ms.masks[j] == m).all()
            ]
            if cands:
                j = cands[int(u_ang * len(cands)) % len(cands)]
                m |= ms.masks[j]
                nm += [n for n in names[j] if n not in nm]
                merged_into.add(j)
        if u_morph < 0.6 * s:
            r = 1 + int(round(max_r * u_rad))
            st = ndimage.generate_binary_structure(2, 1)
            m = (
                ndimage.binary_dilation(m, st, iterations=r)
                if u_dir < 0.5
                else ndimage.binary_erosion(m, st, iterations=r)
            )
        pieces = [m]
        if u_split < 0.15 * s and m.sum() >= 64:
            ys, xs = np.nonzero(m)
            cy, cx = ys.mean(), xs.mean()
            a = u_ang * np.pi
            side = (np.arange(w)[None, :] - cx) * np.cos(a) + (np.arange(h)[:, None] - cy) * np.sin(a) > 0
            pieces = [m & side, m & ~side]
        for piece in pieces:
            if piece.sum() < 4:
                continue
            out_m.append(piece)
            out_l.append(int(ms.level[k]))
            out_n.append(nm)
            out_id.append(int(ms.source_id[k]))
            out_p.append(bool(ms.is_part[k]))  # type: ignore[index]
            out_s.append(float(ms.score[k]))
    if not out_m:
        return MaskSet.empty(h, w, with_names=ms.names is not None)
    arr = np.stack(out_m)
    return MaskSet(
        masks=arr,
        level=np.asarray(out_l, np.int8),
        score=np.asarray(out_s, np.float32),
        box=masks_to_boxes(arr),
        names=out_n if ms.names is not None else None,
        source_id=np.asarray(out_id, np.int64),
        is_part=np.asarray(out_p, bool),
    )
