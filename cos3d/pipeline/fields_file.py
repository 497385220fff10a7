"""``fields.pt``: what stages 1-2 write and :func:`cos3d.pipeline.trained.load` reads, as one typed class.

:class:`FieldsFile` is the schema for both sides: stage 1 writes each level's instance field, stage 2 adds
the language field, the anchors and their targets; the reader gets the same object back. On disk it is a
``torch.save`` dict of tensors and plain values (read with ``weights_only=True``, memory-mapped), with
``format = "cos3d-fields"``; files written before this class existed have the same keys and load unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["FIELDS_FORMAT", "FIELDS_VERSION", "FieldsFile", "LevelRecord"]

FIELDS_FORMAT = "cos3d-fields"
FIELDS_VERSION = 1


@dataclass
class LevelRecord:
    """One mask level's fields: stage 1 sets :attr:`instance`, stage 2 the rest."""

    instance: Tensor
    """[N, d] float32 instance features."""
    language: Tensor | None = None
    """[N, D] language features (stage 2)."""
    anchors: Tensor | None = None
    """[J, d] anchors: mean rendered instance feature of each training mask."""
    targets: Tensor | None = None
    """[J, D] the anchors' mask embeddings."""
    dbar: float | None = None
    """Compactness ``d̄`` of the level."""
    anchor_view: list[str] | None = None
    """[J] the training view each anchor's mask came from."""
    anchor_mask: Tensor | None = None
    """[J] the mask's index within its view's mask set."""

    @property
    def has_language(self) -> bool:
        return self.language is not None and self.anchors is not None and self.targets is not None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class FieldsFile:
    """The whole of ``fields.pt`` (see the module docstring)."""

    n_gaussians: int
    """N: rows of every per-Gaussian field; must equal the run's ``gaussians.ply``."""
    instance_dim: int
    """d, the instance feature width."""
    levels: dict[str, LevelRecord] = field(default_factory=dict)
    """``{level: LevelRecord}`` for the trained levels (``s``, ``m``, ``l``)."""
    embedder: dict[str, Any] = field(default_factory=dict)
    """The mask embedder's identity from the 2D cache manifest (stage 2)."""
    language_dim: int | None = None
    """D, the language feature width (stage 2)."""
    ins2lang: dict[str, Any] = field(default_factory=dict)
    """The stage-2 settings used (stage 2)."""
    version: int = FIELDS_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The dict ``torch.save`` writes (``format`` included)."""
        out: dict[str, Any] = {
            "format": FIELDS_FORMAT,
            "version": self.version,
            "n_gaussians": int(self.n_gaussians),
            "instance_dim": int(self.instance_dim),
            "levels": {lev: rec.to_dict() for lev, rec in self.levels.items()},
        }
        if self.embedder:
            out["embedder"] = dict(self.embedder)
        if self.language_dim is not None:
            out["language_dim"] = int(self.language_dim)
        if self.ins2lang:
            out["ins2lang"] = dict(self.ins2lang)
        return out

    @classmethod
    def from_dict(cls, data: object) -> FieldsFile:
        """Parse a loaded ``fields.pt``; ``ValueError`` says what is wrong (the caller names the file)."""
        if not isinstance(data, dict) or data.get("format") != FIELDS_FORMAT:
            raise ValueError("not a cos3d fields file")
        levels = data.get("levels")
        if not isinstance(levels, dict):
            raise ValueError("'levels' must be a dict")
        version = int(data.get("version", 1))
        if version > FIELDS_VERSION:
            raise ValueError(f"fields format version {version}; this cos3d reads up to {FIELDS_VERSION}")
        recs: dict[str, LevelRecord] = {}
        known = set(LevelRecord.__dataclass_fields__)
        for lev, d in levels.items():
            if not isinstance(d, dict) or not isinstance(d.get("instance"), Tensor):
                raise ValueError(f"level {lev!r} has no instance field")
            extra = set(d) - known
            if extra:
                raise ValueError(f"level {lev!r} holds unknown entries {sorted(extra)}")
            dbar = d.get("dbar")
            recs[str(lev)] = LevelRecord(**{**d, "dbar": None if dbar is None else float(dbar)})
        return cls(
            n_gaussians=int(data["n_gaussians"]),
            instance_dim=int(data.get("instance_dim", next(iter(recs.values())).instance.shape[1] if recs else 0)),
            levels=recs,
            embedder=dict(data.get("embedder") or {}),
            language_dim=None if data.get("language_dim") is None else int(data["language_dim"]),
            ins2lang=dict(data.get("ins2lang") or {}),
            version=version,
        )

    def header(self) -> dict[str, Any]:
        """Everything but the per-level tensors (embedder identity, dims, stage-2 settings)."""
        return {k: v for k, v in self.to_dict().items() if k != "levels"}
