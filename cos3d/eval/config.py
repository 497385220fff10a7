"""The configs of ``cos3d eval lerf|scannet|tabletop`` (their fields are the flags; no heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cos3d.eval.heldout import ABSENT_PROMPTS

Protocol2D = Literal["selected", "occlusion"]


@dataclass
class TabletopEvalConfig:
    """What ``cos3d eval tabletop`` measures (oracle-2D when the run used dataset masks + labels)."""

    run: Path | None = None
    """Run folder made by cos3d train on a tabletop scene."""
    out: Path | None = None
    """Folder for RESULTS.json (default: RUN/eval/tabletop)."""
    protocol: Protocol2D = "occlusion"
    """2D mask protocol: occlusion (visible pixels mostly from the selection) or selected (alpha > 0.7, COS3D)."""
    prompts: Literal["eval", "dev"] = "eval"
    """Which prompts: ``eval``, the held-out protocol's (names, eval_prompts.json phrasings, plurals, absent
    things and parts); ``dev``, the development prompts (cos3d/eval/devprompts.py: where settings are chosen,
    disjoint from every eval prompt) with their catalogue entries as ground truth."""
    absent: tuple[str, ...] = ABSENT_PROMPTS
    """Absent-object prompts (comma list); must not overlap the no-target calibration vocabulary or the scene's names."""
    image_prompts: bool = True
    """Also score box prompts on held-out views (the lift path, and the oracle-2D name look-up apart)."""
    ablation: bool = False
    """Also run the ablation: instance-only, language-only, collaborative with and without post-filters,
    and the training variants (balance 0, MLP mapping, --perturb sweep), trained into RUN/ablation/."""
    perturb: tuple[float, ...] = (0.25, 0.5)
    """Mask perturbation strengths of the ablation's sweep (comma list; 0 to skip)."""
    balance0: bool = True
    """Ablation: train the stage-1 balance 0 variant (COS3D's plain pixel mean)."""
    mlp: bool = True
    """Ablation: train the MLP Ins2Lang variant (2,000 MLP steps per level: minutes on a small CPU)."""
    budget: bool = False
    """Also write the error budget (cos3d/eval/budget.py): the geometry ceiling (an oracle selection of the
    ground-truth Gaussians) and what each step of the query path loses to it, with the failing prompts."""
    threads: int | None = None
    """CPU threads for torch (default: $COS3D_THREADS if set, else torch's)."""


@dataclass
class LerfEvalConfig:
    """What ``cos3d eval lerf`` measures."""

    run: Path | None = None
    """A run folder, or a folder of runs named like the label folders (runs/<scene>/)."""
    labels: Path | None = None
    """LangSplat's LERF-OVS labels: one scene's folder (frame_*.json) or the label/ folder of scenes."""
    out: Path | None = None
    """Folder for RESULTS.json (default: RUN/eval/lerf)."""
    protocols: tuple[Protocol2D, ...] = ("selected", "occlusion")
    """2D mask protocols to score (comma list)."""
    threads: int | None = None
    """CPU threads for torch (default: $COS3D_THREADS if set, else torch's)."""


@dataclass
class ScannetEvalConfig:
    """What ``cos3d eval scannet`` measures."""

    run: Path | None = None
    """A run folder, or a folder of runs named like the scan folders (runs/<scan>/)."""
    scene: Path | None = None
    """A ScanNet scan folder holding <scan>_vh_clean_2.labels.ply, or a folder of such scan folders."""
    classes: int = 19
    """Evaluated classes: 19, 15 or 10 (OpenGaussian's subsets of NYU40)."""
    out: Path | None = None
    """Folder for RESULTS.json (default: RUN/eval/scannet)."""
    threads: int | None = None
    """CPU threads for torch (default: $COS3D_THREADS if set, else torch's)."""
