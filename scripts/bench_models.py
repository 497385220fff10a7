#!/usr/bin/env python
"""What the real 2D models cost: full-size SAM2.1 / SAM 3 / OpenCLIP / SigLIP, timed per view (issue 26 item 4).

No weights can be downloaded here, and a model's compute does not depend on its weights' values, so each
architecture is built at **full size from its published configuration with random weights**, saved the way
its real weights are stored (``save_pretrained`` folder, or an open_clip state-dict ``.pt``) and loaded
through cos3d's **own loaders** (:mod:`cos3d.vision.registry`, :func:`cos3d.vision.sam3.create_concept_segmenter`):
the timed path is the product path.

Per view, at 640×480 and 1296×968 (a ScanNet frame), on a real photo (scikit-image's ``coffee``, resized):

- **automatic masks** (SAM2.1 hiera-large / -tiny, ``--masks sam2-hf``): ``provider.generate(image)`` with the
  shipped settings (32×32 clicks in batches of 64, predicted IoU > 0.7, stability ≥ 0.85, NMS 0.7). Random
  weights decide how many masks survive the IoU / stability filters (often none or nearly all), and the NMS
  cost depends on that count. Since session 9 the provider upsamples only the candidates that pass the
  predicted-IoU filter (that test reads no mask), so that cost depends on the weights too: by default
  (``--iou-pass all``) every candidate passes, which is what every view cost before (an upper bound), and the
  row also gives the cost of one candidate (upsampling + filter statistics) and the forward time at pass shares
  1, 0.5 and 0.25 (what real weights pass is not known here). So the table gives (a) the time as shipped and
  the kept count, (b) the forward cost (image encoder + the 16 decoder batches + the upsampling and filter
  statistics of the candidates that passed) and (c) NMS over a stated number of realistic masks per level
  (``--nms-masks``, synthetic ellipses at the view's size, through the same :func:`levels_to_maskset`).
  The estimate of a real view is (b) + (c).
- **concept query** (SAM 3, the 2D-first branch): ``SAM3ConceptSegmenter.segment(image, "a mug")``, the whole
  detector + presence head per view (``cos3d query --branch 2d|fused`` runs it on 4 views per prompt).
- **crop embeddings** (OpenCLIP ViT-B-16, SigLIP base): ``embedder.embed_masks(image, masks)`` on
  ``--crops`` masks per view (default 100: SA-1B averages ~100 masks per image, Kirillov et al. 2023, "Segment
  Anything", 1.1B masks on 11M images), i.e. cos3d's crop code (:mod:`cos3d.vision.crops`: zero outside the
  mask, box, pad square, resize to the model's size) + the image tower, batch 64.

Time: wall seconds per phase, and the CPU seconds the process used in it (all threads): on a shared machine the
wall time includes waiting for a core, the CPU seconds much less so (OpenMP threads spinning while they wait for
each other still count); divided by the threads they estimate the wall time on that many quiet cores.

Memory: each architecture runs in its own subprocess; per phase the peak RSS (``VmHWM``, reset through
``/proc/self/clear_refs`` before each phase) and, on CUDA, ``torch.cuda.max_memory_allocated``. The CPU has no
torch allocation counter: the column gives the weights' size instead. Times are one run after one warm-up of
the model (repeat with ``--repeats``). The GPU column reads "unmeasured" unless ``--device cuda`` ran.

Published configurations (random weights; the values below are the architectures' own):

- SAM2.1 hiera-large / -tiny: transformers' ``convert_sam2_to_hf.py`` ``get_config`` (``hiera_large``: hidden 144,
  heads [2, 4, 8, 16], blocks [2, 6, 36, 4], global attention [23, 33, 43], windows [8, 4, 16, 8], background
  7×7, channels [1152, 576, 288, 144]; ``hiera_tiny``: ``Sam2HieraDetConfig()``'s defaults, documented as
  facebook/sam2.1-hiera-tiny), the same numbers as the ``sam2`` package's ``configs/sam2.1/sam2.1_hiera_l.yaml``
  / ``_t.yaml`` trunks; processor 1024×1024.
- SAM 3: ``Sam3Config()`` (transformers documents its defaults as facebook/sam3: ViT-L/14 at 1008, 200 queries,
  CLIP text encoder 24 layers × 1024).
- SigLIP: google/siglip-base-patch16-224's ``config.json`` (text hidden 768, intermediate 3072, 12 heads,
  vocabulary 32000; vision patch 16; everything else ``SiglipConfig``'s defaults: 12 layers × 768, 224 px).
- OpenCLIP: ``open_clip.create_model("ViT-B-16", pretrained=None)`` (its bundled ``ViT-B-16.json``).

SAM 3's and SigLIP's tokenizers need a download; the bundled MiniLM WordPiece tokenizer stands in (the token
ids fit both vocabularies; SAM 3 pads every text to 32 tokens, so the compute is the same).

    COS3D_THREADS=2 python scripts/bench_models.py --threads 2 --out bench_models.json
    python scripts/bench_models.py --tiny --out /tmp/m.json          # tiny configs, seconds (the test)

Prints a table and, as its last line, one JSON object (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ARCHS: dict[str, dict[str, Any]] = {  # in the order they run: what the README's scan cost needs first
    "sam2.1-hiera-large": {"task": "masks", "provider": "sam2-hf", "hub": "facebook/sam2.1-hiera-large"},
    "openclip-vit-b-16": {"task": "crops", "provider": "openclip", "hub": "ViT-B-16 (laion2b_s34b_b88k)"},
    "siglip-base": {"task": "crops", "provider": "siglip", "hub": "google/siglip-base-patch16-224"},
    "sam3": {"task": "concept", "provider": "sam3 (concepts)", "hub": "facebook/sam3"},
    "sam2.1-hiera-tiny": {"task": "masks", "provider": "sam2-hf", "hub": "facebook/sam2.1-hiera-tiny"},
}
"""The architectures timed: what cos3d does with each per view, and the weights a user would bring."""

HIERA = {
    # transformers convert_sam2_to_hf.py get_config("sam2.1_hiera_large") = sam2's sam2.1_hiera_l.yaml trunk
    "sam2.1-hiera-large": dict(
        backbone=dict(hidden_size=144, num_attention_heads=2, embed_dim_per_stage=[144, 288, 576, 1152],
                      num_attention_heads_per_stage=[2, 4, 8, 16], blocks_per_stage=[2, 6, 36, 4],
                      global_attention_blocks=[23, 33, 43], window_positional_embedding_background_size=[7, 7],
                      window_size_per_stage=[8, 4, 16, 8]),
        backbone_channel_list=[1152, 576, 288, 144],
    ),
    # get_config("sam2.1_hiera_tiny") = Sam2HieraDetConfig() = sam2.1_hiera_t.yaml trunk
    "sam2.1-hiera-tiny": dict(
        backbone=dict(hidden_size=96, num_attention_heads=1, embed_dim_per_stage=[96, 192, 384, 768],
                      num_attention_heads_per_stage=[1, 2, 4, 8], blocks_per_stage=[1, 2, 7, 2],
                      global_attention_blocks=[5, 7, 9], window_positional_embedding_background_size=[7, 7],
                      window_size_per_stage=[8, 4, 14, 7]),
        backbone_channel_list=[768, 384, 192, 96],
    ),
}
"""SAM2.1 Hiera image encoders (module docstring); prompt encoder and mask decoder: transformers' defaults
(``Sam2PromptEncoderConfig()`` / ``Sam2MaskDecoderConfig()``, as the conversion script uses)."""

SIGLIP_BASE_224 = {
    "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "vocab_size": 32000},
    "vision_config": {"patch_size": 16},
}
"""google/siglip-base-patch16-224 config.json (the rest: SiglipConfig's defaults)."""

SIZES = ((640, 480), (1296, 968))
TINY_SIZES = ((64, 48), (96, 72))
CONCEPT_TEXT = "a mug"


# ---------------------------------------------------------------------------------------------- memory
def _status_kib(key: str) -> int:
    m = re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text())
    return int(m.group(1)) if m else 0


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)
    except OSError:
        pass


class Phase:
    """Times one phase and records its peak RSS (and CUDA allocations)."""

    def __init__(self, device: str) -> None:
        self.device = device

    def __enter__(self) -> "Phase":
        import gc

        import torch

        gc.collect()
        _reset_peak()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        self.c0 = time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.t0
        self.cpu_seconds = time.process_time() - self.c0
        self.peak_rss_mib = round(_status_kib("VmHWM") / 1024, 1)
        self.cuda_peak_mib = (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                              if self.device.startswith("cuda") else None)

    def record(self) -> dict[str, Any]:
        return {"s": round(self.seconds, 3), "cpu_s": round(self.cpu_seconds, 3), "peak_rss_mib": self.peak_rss_mib,
                "cuda_peak_mib": self.cuda_peak_mib}


# ---------------------------------------------------------------------------------------------- inputs
def photo(width: int, height: int) -> Any:
    """scikit-image's ``coffee`` photo, uint8 [H, W, 3] resized to ``width`` × ``height``."""
    import numpy as np
    from PIL import Image
    from skimage import data

    return np.asarray(Image.fromarray(data.coffee()).convert("RGB").resize((width, height), Image.BICUBIC))


def synthetic_masks(width: int, height: int, n: int, seed: int = 0) -> Any:
    """bool [n, H, W]: ellipses of radii 3-35 % of the view, anywhere in it (object- and part-sized masks)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    out = np.zeros((n, height, width), bool)
    for k in range(n):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(0.03, 0.35) * width, rng.uniform(0.03, 0.35) * height
        out[k] = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
        if not out[k].any():
            out[k, int(cy) % height, int(cx) % width] = True
    return out


# ---------------------------------------------------------------------------------------------- models
def _minilm_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from cos3d.vision.labels_embedder import default_labels_model_dir

    return AutoTokenizer.from_pretrained(str(default_labels_model_dir()))


def write_model(arch: str, folder: Path, tiny: bool) -> dict[str, Any]:
    """Build ``arch`` with random weights, save it where cos3d's loader reads it; returns the loader's kwargs."""
    import torch

    torch.manual_seed(0)
    if tiny:
        from cos3d.testing import vision as tv

        if arch.startswith("sam2"):
            return {"model": str(tv.write_tiny_sam2_hf(folder))}
        if arch == "sam3":
            return {"model": str(tv.write_tiny_sam3(folder))}
        if arch == "siglip-base":
            return {"model": str(tv.write_random_siglip(folder))}
        cfg, ckpt = tv.write_tiny_openclip(folder)
        return {"model": str(cfg), "checkpoint": str(ckpt)}
    if arch.startswith("sam2"):
        from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, Sam2Processor

        h = HIERA[arch]
        cfg = Sam2Config(vision_config=dict(backbone_config=dict(model_type="sam2_hiera_det_model", **h["backbone"]),
                                            backbone_channel_list=h["backbone_channel_list"]))
        Sam2Model(cfg).save_pretrained(folder)
        Sam2Processor(image_processor=Sam2ImageProcessor()).save_pretrained(folder)
        return {"model": str(folder)}
    if arch == "sam3":
        from transformers import Sam3Config, Sam3ImageProcessor, Sam3Model, Sam3Processor

        tok = _minilm_tokenizer()
        cfg = Sam3Config()
        cfg.text_config.pad_token_id, cfg.text_config.bos_token_id = tok.pad_token_id, tok.cls_token_id
        cfg.text_config.eos_token_id = tok.sep_token_id
        Sam3Model(cfg).save_pretrained(folder)
        Sam3Processor(image_processor=Sam3ImageProcessor(), tokenizer=tok).save_pretrained(folder)
        return {"model": str(folder)}
    if arch == "siglip-base":
        from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

        tok = _minilm_tokenizer()
        text = dict(SIGLIP_BASE_224["text_config"], pad_token_id=tok.pad_token_id)
        SiglipModel(SiglipConfig(text_config=text, vision_config=SIGLIP_BASE_224["vision_config"])).save_pretrained(folder)
        SiglipProcessor(image_processor=SiglipImageProcessor(), tokenizer=tok).save_pretrained(folder)
        return {"model": str(folder)}
    import open_clip

    model = open_clip.create_model("ViT-B-16", pretrained=None)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "open_clip_vit_b16_random.pt")
    return {"model": "ViT-B-16", "checkpoint": str(folder / "open_clip_vit_b16_random.pt")}


def _params(module: Any) -> tuple[int, int]:
    """(parameter count, bytes of parameters + buffers)."""
    n = sum(p.numel() for p in module.parameters())
    b = sum(p.numel() * p.element_size() for p in module.parameters())
    b += sum(x.numel() * x.element_size() for x in module.buffers())
    return int(n), int(b)


# ---------------------------------------------------------------------------------------------- one architecture
def _timed(fn: Callable, bucket: list[float], sync: Callable[[], None]) -> Callable:
    def wrapper(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        sync()
        bucket.append(time.perf_counter() - t0)
        return out

    return wrapper


def bench_masks(loader: dict, args: argparse.Namespace, sizes: list[tuple[int, int]]) -> dict[str, Any]:
    import numpy as np
    import torch

    import cos3d.vision.sam2_hf as hf
    from cos3d.vision.registry import create

    pps = args.points_per_side
    with Phase(args.device) as load:
        prov = create("masks", "sam2-hf", device=args.device, points_per_side=pps, **loader)
    n, nbytes = _params(prov.model)
    out: dict[str, Any] = {"params": n, "weights_mib": round(nbytes / 2**20, 1), "load": load.record(),
                           "model_id": prov.model_id, "settings": dict(prov.params, points_per_batch=prov.points_per_batch),
                           "views": []}
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    prov._encode(photo(56, 40))  # warm-up: one encoder pass (the image is resized to the model's size anyway)
    if args.iou_pass == "all":  # every candidate upsampled and filtered: the most a view can cost (see docstring)
        prov.pred_iou_thresh = -1.0
    enc, dec, upsampled, filt, nms = [], [], [], [], []
    kept_pre: list[int] = []
    n_up: list[int] = []
    orig_keep, orig_levels = hf.keep_upsampled, hf.levels_to_maskset
    orig_up = prov._upsample

    def keep(provider: Any, logits: Any, iou: Any, level: Any, per_level: list) -> None:
        before = sum(len(c[1]) for chunks in per_level for c in chunks)
        orig_keep(provider, logits, iou, level, per_level)
        kept_pre.append(sum(len(c[1]) for chunks in per_level for c in chunks) - before)

    def up(low: Any, hw: Any) -> Any:
        n_up.append(len(low))
        return orig_up(low, hw)

    prov._encode = _timed(prov._encode, enc, sync)
    prov._decode = _timed(prov._decode, dec, sync)
    prov._upsample = _timed(up, upsampled, sync)
    hf.keep_upsampled = _timed(keep, filt, sync)
    hf.levels_to_maskset = _timed(orig_levels, nms, sync)
    try:
        for w, h in sizes:
            image = photo(w, h)
            for _ in range(args.repeats):
                for b in (enc, dec, upsampled, filt, nms, kept_pre, n_up):
                    b.clear()
                with Phase(args.device) as ph:
                    ms = prov.generate(image)
                row = {"size": f"{w}x{h}", "as_shipped": ph.record(), "encode_s": round(sum(enc), 4),
                       "decode_s": round(sum(dec), 4), "upsample_s": round(sum(upsampled), 4),
                       "filter_s": round(sum(filt), 4), "nms_s": round(sum(nms), 4),
                       "decoder_batches": len(dec), "clicks": pps * pps, "candidates": 3 * pps * pps,
                       "upsampled": int(sum(n_up)), "iou_pass": args.iou_pass,
                       "kept_before_nms": int(sum(kept_pre)), "kept": len(ms),
                       "kept_per_level": {lv: int((ms.level == i).sum()) for i, lv in enumerate("sml")}}
                row["forward_s"] = round(row["encode_s"] + row["decode_s"] + row["upsample_s"] + row["filter_s"], 4)
                # what a view costs when a share p of the candidates passes the predicted-IoU filter (only those
                # are upsampled and filtered since session 9): fixed part + p x candidates x the cost of one
                if row["upsampled"]:
                    each = (row["upsample_s"] + row["filter_s"]) / row["upsampled"]
                    fixed = row["encode_s"] + row["decode_s"]
                    row["per_candidate_s"] = round(each, 6)
                    row["forward_at_pass_share_s"] = {str(p_): round(fixed + p_ * row["candidates"] * each, 3)
                                                      for p_ in (1.0, 0.5, 0.25)}
                # NMS over a realistic count: --nms-masks synthetic masks per level through levels_to_maskset
                k = args.nms_masks
                syn = synthetic_masks(w, h, 3 * k, seed=1)
                scores = np.random.default_rng(2).uniform(0.7, 1.0, 3 * k).astype(np.float32)
                per_level = [[(syn[i * k:(i + 1) * k], scores[i * k:(i + 1) * k])] for i in range(3)]
                with Phase(args.device) as pn:
                    after = orig_levels(per_level, h, w, prov.nms_thresh)
                row["nms_realistic"] = {"masks_per_level": k, "kept": len(after), **pn.record()}
                row["estimate_s"] = round(row["forward_s"] + pn.seconds, 4)
                out["views"].append(row)
                print(f"  {w}x{h}: as shipped {ph.seconds:.2f} s ({ph.cpu_seconds:.1f} CPU-s; kept {len(ms)} of {sum(kept_pre)} past the filters), "
                      f"encode {row['encode_s']:.2f} + decode {row['decode_s']:.2f} + upsample {row['upsample_s']:.2f} "
                      f"({row['upsampled']} of {row['candidates']} candidates) + filter {row['filter_s']:.2f} s; "
                      f"NMS of {3 * k} masks {pn.seconds:.2f} s; peak RSS {ph.peak_rss_mib:.0f} MiB", file=sys.stderr)
    finally:
        hf.keep_upsampled, hf.levels_to_maskset = orig_keep, orig_levels
    return out


def bench_concept(loader: dict, args: argparse.Namespace, sizes: list[tuple[int, int]]) -> dict[str, Any]:
    from cos3d.vision.sam3 import create_concept_segmenter

    with Phase(args.device) as load:
        seg = create_concept_segmenter("sam3", loader["model"], device=args.device)
    n, nbytes = _params(seg.model)
    out: dict[str, Any] = {"params": n, "weights_mib": round(nbytes / 2**20, 1), "load": load.record(),
                           "model_id": seg.model_id, "settings": {"text": CONCEPT_TEXT, "score_thresh": seg.score_thresh,
                                                                  "mask_thresh": seg.mask_thresh}, "views": []}
    seg.segment(photo(56, 40), CONCEPT_TEXT)  # warm-up (a size no view has)
    for w, h in sizes:
        image = photo(w, h)
        for _ in range(args.repeats):
            with Phase(args.device) as ph:
                cm = seg.segment(image, CONCEPT_TEXT)
            out["views"].append({"size": f"{w}x{h}", "as_shipped": ph.record(), "instances": len(cm),
                                 "presence": round(cm.presence, 4), "estimate_s": round(ph.seconds, 3)})
            print(f"  {w}x{h}: {ph.seconds:.2f} s ({ph.cpu_seconds:.1f} CPU-s), {len(cm)} instances, presence {cm.presence:.3f}, "
                  f"peak RSS {ph.peak_rss_mib:.0f} MiB", file=sys.stderr)
    return out


def bench_crops(arch: str, loader: dict, args: argparse.Namespace, sizes: list[tuple[int, int]]) -> dict[str, Any]:
    from cos3d.vision.masks import MaskSet
    from cos3d.vision.registry import create

    name = ARCHS[arch]["provider"]
    with Phase(args.device) as load:
        emb = create("embedder", name, device=args.device, **loader)
    n, nbytes = _params(emb.model)
    vis = emb.model.visual if name == "openclip" else emb.model.vision_model
    out: dict[str, Any] = {"params": n, "vision_params": _params(vis)[0], "weights_mib": round(nbytes / 2**20, 1),
                           "load": load.record(), "model_id": emb.model_id,
                           "settings": {"crop_size": emb.crop_size, "batch_size": emb.batch_size, "fp16": emb.fp16,
                                        "crops_per_view": args.crops}, "views": []}
    emb.embed_masks(photo(56, 40), MaskSet.from_masks(synthetic_masks(56, 40, 2), "l"))  # warm-up
    for w, h in sizes:
        image = photo(w, h)
        ms = MaskSet.from_masks(synthetic_masks(w, h, args.crops), "l")
        for _ in range(args.repeats):
            with Phase(args.device) as ph:
                e = emb.embed_masks(image, ms)
            assert e.shape == (args.crops, emb.dim)
            out["views"].append({"size": f"{w}x{h}", "as_shipped": ph.record(), "crops": args.crops,
                                 "per_crop_ms": round(1000 * ph.seconds / args.crops, 2),
                                 "estimate_s": round(ph.seconds, 3)})
            print(f"  {w}x{h}: {args.crops} crops {ph.seconds:.2f} s ({ph.cpu_seconds:.1f} CPU-s), peak RSS {ph.peak_rss_mib:.0f} MiB",
                  file=sys.stderr)
    return out


def run_arch(arch: str, args: argparse.Namespace) -> dict[str, Any]:
    """One architecture: build, save, load through cos3d, time (in this process)."""
    import gc

    import torch

    torch.set_num_threads(args.threads)
    sizes = list(TINY_SIZES if args.tiny else SIZES)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"bench_models_{arch}_") as tmp:
        loader = write_model(arch, Path(tmp) / "weights", args.tiny)
        gc.collect()
        built = time.perf_counter() - t0
        task = ARCHS[arch]["task"]
        if task == "masks":
            res = bench_masks(loader, args, sizes)
        elif task == "concept":
            res = bench_concept(loader, args, sizes)
        else:
            res = bench_crops(arch, loader, args, sizes)
    res.update(arch=arch, task=task, provider=ARCHS[arch]["provider"], weights=ARCHS[arch]["hub"],
               config="tiny test config" if args.tiny else "full size, published config, random weights",
               build_and_save_s=round(built, 1), device=args.device, threads=torch.get_num_threads())
    return res


def worker(args: argparse.Namespace) -> int:
    """``--worker ARCH``: :func:`run_arch` in this (sub)process, its JSON to ``args.result``."""
    Path(args.result).write_text(json.dumps(run_arch(args.worker, args)))
    return 0


# ---------------------------------------------------------------------------------------------- driver
def _uptime() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, text=True,
                              capture_output=True).stdout.strip() or "?"
    except OSError:
        return "?"


def preset_max_views(preset: str) -> int | None:
    """``--max-views`` of ``cos3d train --preset PRESET`` (the CPU default is ``fast``, the CUDA one ``full``),
    read through the command's own parser and preset files."""
    from cos3d.cli import build_parser
    from cos3d.commands.train import config_of

    argv = ["train", "--scene", "SCENE", "--preset", preset]
    cfg, _, _ = config_of(build_parser(argv).parse_args(argv))
    return cfg.views.max_views


def scan_cost(results: dict[str, dict], size: str) -> dict[str, Any]:
    """Preprocessing a 1,000-frame scan with the default view selection: views × (masks + embeddings) per view,
    SAM2.1 hiera-large + OpenCLIP ViT-B-16 (``--masks sam2-hf --embedder openclip``'s default weights)."""
    views = {"cpu (preset fast)": preset_max_views("fast"), "gpu (preset full)": preset_max_views("full")}

    def row(arch: str) -> dict | None:
        r = results.get(arch)
        return next((v for v in (r or {}).get("views", []) if v["size"] == size), None)

    def cpu_s(v: dict) -> float:  # CPU seconds of the view's estimate (masks: as shipped + the realistic NMS)
        return float(v["as_shipped"]["cpu_s"]) + float(v.get("nms_realistic", {}).get("cpu_s", 0.0))

    masks, crops = row("sam2.1-hiera-large"), row("openclip-vit-b-16")
    threads = int((results.get("sam2.1-hiera-large") or {}).get("threads", 1))
    out: dict[str, Any] = {"frames": 1000, "size": size, "masks": "sam2.1-hiera-large", "embedder": "openclip-vit-b-16"}
    for dev, n in views.items():
        n = min(1000, int(n or 1000))
        measured = dev.startswith("cpu") and results.get("sam2.1-hiera-large", {}).get("device", "cpu") == "cpu"
        if measured and masks is not None and crops is not None:
            per = float(masks["estimate_s"]) + float(crops["estimate_s"])
            cpu = cpu_s(masks) + cpu_s(crops)
            out[dev] = {"views": n, "per_view_s": round(per, 2), "total_s": round(n * per, 1),
                        "total_h": round(n * per / 3600, 2), "cpu_s_per_view": round(cpu, 3),
                        "quiet_estimate_h": round(n * cpu / threads / 3600, 2), "threads": threads}
        else:
            out[dev] = {"views": n, "per_view_s": "unmeasured", "total_s": "unmeasured"}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS), metavar="ARCH",
                    help=f"architectures (default all: {', '.join(ARCHS)})")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("COS3D_THREADS", "2")),
                    help="torch CPU threads (default $COS3D_THREADS, else 2)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda: the GPU column is measured)")
    ap.add_argument("--crops", type=int, default=100, help="mask crops embedded per view (default 100, see docstring)")
    ap.add_argument("--points-per-side", type=int, default=32, help="SAM click grid (default 32, the shipped value)")
    ap.add_argument("--nms-masks", type=int, default=64, help="realistic masks per level for the NMS timing")
    ap.add_argument("--iou-pass", choices=("all", "shipped"), default="all",
                    help="automatic masks: every candidate passes the predicted-IoU filter (all: the most a view "
                         "costs; random weights' IoU predictions say nothing about real ones) or the shipped 0.7")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per view size (after one warm-up)")
    ap.add_argument("--tiny", action="store_true", help="tiny test configs at 64x48 and 96x72 (seconds; for tests)")
    ap.add_argument("--in-process", action="store_true",
                    help="run the architectures in this process (peaks not separated; the default with --tiny)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here (atomically)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.tiny and args.points_per_side == 32:
        args.points_per_side, args.crops, args.nms_masks = 4, min(args.crops, 6), min(args.nms_masks, 4)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("bench_models: --device cuda but no CUDA device here; use --device cpu", file=sys.stderr)
            return 2
    if args.worker:
        return worker(args)

    load_before = _uptime()
    t_all = time.perf_counter()
    results: dict[str, dict] = {}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               COS3D_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    failed: dict[str, str] = {}
    in_process = args.in_process or args.tiny
    for arch in args.archs:
        print(f"{arch}: building at {'tiny' if args.tiny else 'full'} size, random weights ...", file=sys.stderr,
              flush=True)
        if in_process:
            results[arch] = run_arch(arch, args)
            continue
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            result = f.name
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", arch, "--result", result,
               "--threads", str(args.threads), "--device", args.device, "--crops", str(args.crops),
               "--points-per-side", str(args.points_per_side), "--nms-masks", str(args.nms_masks),
               "--repeats", str(args.repeats)] + (["--tiny"] if args.tiny else [])
        p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=None, text=True)
        if p.returncode != 0 or not Path(result).stat().st_size:
            failed[arch] = f"worker exit {p.returncode}"
        else:
            results[arch] = json.loads(Path(result).read_text())
        Path(result).unlink(missing_ok=True)
        if args.out is not None:  # what is done so far, in case a later architecture fails or is stopped
            from cos3d.core.atomic import write_json

            write_json(args.out, {"bench": "models", "complete": False, "done": list(results), "failed": failed,
                                  "load_before": load_before, "load_now": _uptime(), "results": results})
    sizes = [f"{w}x{h}" for w, h in (TINY_SIZES if args.tiny else SIZES)]
    gpu_measured = args.device.startswith("cuda")

    hdr = (f"{'architecture':20} {'task':8} {'params':>8} {'size':>9} {'CPU s/view':>10} {'CPU-s used':>10} "
           f"{'forward s':>9} {'kept / n':>9} {'peak RSS MiB':>12} {'GPU s/view':>10}")
    print(hdr)
    print("-" * len(hdr))
    for arch, r in results.items():
        for v in r["views"]:
            detail = {"masks": f"{v.get('kept', '')}/{v.get('kept_before_nms', '')}",
                      "concept": f"{v.get('instances', '')} inst", "crops": f"{v.get('crops', '')} crops"}[r["task"]]
            fwd = f"{v['forward_s']:.2f}" if "forward_s" in v else "-"
            cpu = v["as_shipped"]["s"] if not gpu_measured else "-"
            gpu = v["as_shipped"]["s"] if gpu_measured else "unmeasured"
            print(f"{arch:20} {r['task']:8} {r['params'] / 1e6:>7.1f}M {v['size']:>9} {cpu:>10} {v['as_shipped']['cpu_s']:>10} "
                  f"{fwd:>9} {detail:>9} "
                  f"{v['as_shipped']['peak_rss_mib']:>12.0f} {gpu:>10}")
    scan = {s: scan_cost(results, s) for s in sizes}
    for s, c in scan.items():
        cpu = c["cpu (preset fast)"]
        if isinstance(cpu.get("total_s"), float):
            print(f"1,000-frame scan at {s}: CPU {cpu['views']} views x {cpu['per_view_s']} s = {cpu['total_h']} h "
                  f"({cpu['cpu_s_per_view']} CPU-s a view: ~{cpu['quiet_estimate_h']} h on {cpu['threads']} "
                  f"quiet cores); GPU {c['gpu (preset full)']['views']} views: "
                  f"{'measured' if gpu_measured else 'unmeasured'}")
    for arch, why in failed.items():
        print(f"{arch}: FAILED ({why})")
    summary = {
        "bench": "models", "complete": True, "argv": sys.argv[1:] if argv is None else list(argv), "commit": _commit(),
        "tiny": bool(args.tiny), "in_process": bool(in_process), "device": args.device, "threads": args.threads,
        "gpu": "measured" if gpu_measured else "unmeasured",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_before": load_before, "load_after": _uptime()},
        "total_s": round(time.perf_counter() - t_all, 1), "sizes": sizes, "results": results,
        "scan_1000_frames": scan, "failed": failed,
    }
    if args.out is not None:
        from cos3d.core.atomic import write_json

        write_json(args.out, summary)
    print(json.dumps(summary))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
