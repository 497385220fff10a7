"""Fault injection for the Ray executor's tests and benchmark (importable by Ray workers).

:class:`InstrumentedFactory` wraps a models factory (:class:`cos3d.distributed.masks.ModelsFactory`):
its provider has the wrapped provider's name, model id, params and frame key — so the cache keys
and files are exactly those of the plain models — but it can sleep per view (so that a kill lands
mid-view), fail on chosen frames, and append one line per computed view to a log file (so that a
test can count how often each view was computed).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from cos3d.vision.base import Embedder, MaskProvider


class _Instrumented(MaskProvider):
    def __init__(self, base: MaskProvider, delay_s: float, fail_on: tuple[str, ...], log: str | None) -> None:
        self.base, self.delay_s, self.fail_on, self.log = base, delay_s, fail_on, log
        self.name = base.name

    @property
    def model_id(self) -> str:
        return self.base.model_id

    @property
    def params(self) -> dict[str, Any]:
        return self.base.params

    def frame_key(self, frame: Any) -> str:
        return self.base.frame_key(frame)

    def generate(self, image: np.ndarray, frame: Any = None) -> Any:
        name = getattr(frame, "name", "?")
        if name in self.fail_on:
            raise RuntimeError(f"injected failure on view {name}")
        if self.delay_s:
            time.sleep(self.delay_s)
        out = self.base.generate(image, frame)
        if self.log:
            with open(self.log, "a") as f:  # one short line: appends of this size do not interleave
                f.write(f"{name} {os.getpid()}\n")
        return out


@dataclass(frozen=True)
class InstrumentedFactory:
    """``factory`` with a slower, failing or logging provider (see the module docstring)."""

    factory: Callable[[Any, str], tuple[Any, Any]]
    delay_s: float = 0.0
    fail_on: tuple[str, ...] = ()
    log: str | None = None

    def __call__(self, scene: Any, device: str) -> tuple[Any, Any]:
        provider, embedder = self.factory(scene, device)
        return _Instrumented(provider, self.delay_s, tuple(self.fail_on), self.log), embedder


class HashEmbedder(Embedder):
    """A model-free embedder for executor tests: each mask's embedding is a seeded unit vector drawn
    from a hash of its pixels (deterministic, no torch model to load, so a worker starts in seconds)."""

    name = "hash"
    dim = 16

    @property
    def model_id(self) -> str:
        return "hash:test"

    def _vec(self, data: bytes) -> np.ndarray:
        import zlib

        v = np.random.default_rng(zlib.crc32(data)).standard_normal(self.dim).astype(np.float32)
        return v / np.linalg.norm(v)

    def embed_masks(self, image: np.ndarray, masks: Any) -> np.ndarray:
        out = np.stack([self._vec(np.packbits(m).tobytes()) for m in masks.masks]) if len(masks) else None
        return out if out is not None else np.zeros((0, self.dim), np.float32)

    def embed_text(self, texts: list[str]) -> Any:
        import torch

        return torch.from_numpy(np.stack([self._vec(t.encode()) for t in texts]))

    def embed_image_prompt(self, image: np.ndarray, mask: np.ndarray, *, names: Any = None) -> Any:
        import torch

        return torch.from_numpy(self._vec(np.packbits(mask).tobytes()))


@dataclass(frozen=True)
class DatasetHashFactory:
    """Dataset masks (oracle-2D) + :class:`HashEmbedder`: the cheapest real cache content."""

    def __call__(self, scene: Any, device: str) -> tuple[Any, Any]:
        from cos3d.vision.registry import create_mask_provider

        return create_mask_provider("dataset", scene=scene), HashEmbedder()


def computed_counts(log: str) -> dict[str, int]:
    """``{view: times computed}`` from an :class:`InstrumentedFactory` log."""
    counts: dict[str, int] = {}
    if os.path.exists(log):
        for line in open(log).read().splitlines():
            if line.strip():
                name = line.split()[0]
                counts[name] = counts.get(name, 0) + 1
    return counts


def crash_once(marker: str, log: str) -> dict:
    """A batch item's work that kills its own worker process the first time (no ``marker`` file yet)
    and succeeds the second: what a crash, an OOM kill or a lost node looks like to a scene's task."""
    with open(log, "a") as f:
        f.write(f"attempt {os.getpid()}\n")
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)  # no exception, no cleanup: the process is gone
    return {"run": os.path.dirname(marker), "metrics": {"attempts": len(open(log).read().splitlines())}}
