"""Test fixtures for the 2D models, usable without any downloaded weights.

- :func:`write_synthetic_scene`: a tiny scene of flat-coloured shapes with instance and part maps,
  written in the ScanNet layout and returned as a :class:`~cos3d.data.scene.Scene`;
- :func:`write_random_sam2_checkpoint`, :func:`write_tiny_openclip`, :func:`write_random_siglip`,
  :func:`write_tiny_sam2_hf`, :func:`write_tiny_sam3_tracker`, :func:`write_tiny_sam3`:
  randomly initialised models saved where the real loaders (``--sam2-checkpoint``,
  ``--clip-model/--clip-checkpoint``, ``--siglip-model``) read them, so the real code paths run offline.
  Their outputs are meaningless; only shapes, dtypes and plumbing can be checked with them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cos3d.data.scene import Camera, Frame, PartInfo, Scene

SYNTHETIC_LABELS = {
    1: ["red coffee mug", "mug", "cup"],
    2: ["soccer ball", "football", "ball"],
    3: ["yellow rubber duck", "duck", "toy duck"],
}
SYNTHETIC_PARTS = {11: (["handle", "mug handle"], 1), 12: (["body", "mug body"], 1)}


def synthetic_maps(width: int, height: int, shift: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image uint8 [H, W, 3], instance int64 [H, W], part int64 [H, W])`` of one synthetic view:
    a red mug (body + handle parts), a white ball and a yellow duck on a grey-blue gradient."""
    h, w = height, width
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([60 + 40 * yy / h, 70 + 30 * xx / w, 110 + 0 * xx], -1)
    inst = np.zeros((h, w), np.int64)
    part = np.zeros((h, w), np.int64)
    # mug: body rectangle + handle to its right
    bx0, by0, bw, bh = int(0.10 * w) + shift, int(0.30 * h), int(0.22 * w), int(0.45 * h)
    body = (xx >= bx0) & (xx < bx0 + bw) & (yy >= by0) & (yy < by0 + bh)
    hx0 = bx0 + bw
    handle = (xx >= hx0) & (xx < hx0 + max(3, int(0.06 * w))) & (yy >= by0 + bh // 4) & (yy < by0 + 3 * bh // 4)
    inst[body | handle] = 1
    part[body] = 12
    part[handle] = 11
    img[body] = (200, 30, 30)
    img[handle] = (150, 20, 20)
    # ball: disc
    cx, cy, r = int(0.62 * w) - shift, int(0.45 * h), int(0.14 * min(w, h) + 4)
    ball = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
    inst[ball] = 2
    img[ball] = (235, 235, 235)
    # duck: ellipse, bottom right
    ex, ey = int(0.82 * w), int(0.78 * h) - shift // 2
    duck = ((xx - ex) / (0.10 * w)) ** 2 + ((yy - ey) / (0.12 * h)) ** 2 < 1
    duck &= inst == 0
    inst[duck] = 3
    img[duck] = (240, 210, 40)
    return np.clip(img, 0, 255).astype(np.uint8), inst, part


def write_synthetic_scene(root: str | Path, n_frames: int = 3, width: int = 96, height: int = 64) -> Scene:
    """Write a synthetic scene in the ScanNet layout under ``root`` and return it as a Scene.

    Frame ``i`` shifts the objects by ``2 i`` pixels. ``labels.json`` / ``parts.json`` use
    :data:`SYNTHETIC_LABELS` / :data:`SYNTHETIC_PARTS`.
    """
    from PIL import Image

    root = Path(root)
    for d in ("color", "instance", "part", "pose", "intrinsic"):
        (root / d).mkdir(parents=True, exist_ok=True)
    K = np.array([[width, 0, (width - 1) / 2], [0, width, (height - 1) / 2], [0, 0, 1]], np.float64)
    K4 = np.eye(4)
    K4[:3, :3] = K
    np.savetxt(root / "intrinsic" / "intrinsic_color.txt", K4)
    frames = []
    for i in range(n_frames):
        img, inst, part = synthetic_maps(width, height, shift=2 * i)
        Image.fromarray(img).save(root / "color" / f"{i}.png")
        Image.fromarray(inst.astype(np.uint16)).save(root / "instance" / f"{i}.png")
        Image.fromarray(part.astype(np.uint16)).save(root / "part" / f"{i}.png")
        c2w = np.eye(4)
        c2w[0, 3] = 0.05 * i
        np.savetxt(root / "pose" / f"{i}.txt", c2w)
        frames.append(
            Frame(
                name=str(i),
                camera=Camera(K=K, c2w=c2w, width=width, height=height),
                image_path=root / "color" / f"{i}.png",
                instance_path=root / "instance" / f"{i}.png",
                part_path=root / "part" / f"{i}.png",
            )
        )
    (root / "labels.json").write_text(json.dumps({str(k): v for k, v in SYNTHETIC_LABELS.items()}))
    (root / "parts.json").write_text(
        json.dumps({str(k): {"names": n, "parent": p} for k, (n, p) in SYNTHETIC_PARTS.items()})
    )
    return Scene(
        root=root,
        frames=frames,
        labels={k: list(v) for k, v in SYNTHETIC_LABELS.items()},
        parts={k: PartInfo(names=list(n), parent=p) for k, (n, p) in SYNTHETIC_PARTS.items()},
        source="scannet",
    )


def write_random_sam2_checkpoint(
    path: str | Path, config: str = "configs/sam2.1/sam2.1_hiera_t.yaml", seed: int = 0
) -> Path:
    """A randomly initialised SAM2 (``config``) saved as ``{"model": state_dict}`` like the released files."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from cos3d.vision.sam2_masks import resolve_sam2_config

    torch.manual_seed(seed)
    cfg = OmegaConf.load(resolve_sam2_config(config))
    model = instantiate(cfg.model, _recursive_=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, path)
    return path


TINY_CLIP_NAME = "cos3d-test-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def write_tiny_openclip(folder: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """A tiny open_clip architecture (ViT vision tower + CLIP text tower, 64-d) as a model-config JSON,
    and a randomly initialised checkpoint of it. Returns ``(config_json, checkpoint)``; use them as
    ``--clip-model CONFIG_JSON --clip-checkpoint CHECKPOINT``."""
    import open_clip
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg_path = folder / f"{TINY_CLIP_NAME}.json"
    cfg_path.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None)
    ckpt = folder / "tiny_clip.pt"
    torch.save(model.state_dict(), ckpt)
    return cfg_path, ckpt


def write_random_siglip(folder: str | Path, seed: int = 0) -> Path:
    """A tiny randomly initialised SigLIP saved with ``save_pretrained`` (model + processor); the
    tokenizer is borrowed from the bundled MiniLM model (SigLIP's own needs a download)."""
    import torch
    from transformers import AutoTokenizer, SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    from cos3d.vision.labels_embedder import default_labels_model_dir

    folder = Path(folder)
    tok = AutoTokenizer.from_pretrained(str(default_labels_model_dir()))
    torch.manual_seed(seed)
    cfg = SiglipConfig(
        text_config=dict(
            vocab_size=tok.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=64,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.cls_token_id,
            eos_token_id=tok.sep_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=64,
            patch_size=16,
        ),
    )
    model = SiglipModel(cfg)
    proc = SiglipProcessor(image_processor=SiglipImageProcessor(size={"height": 64, "width": 64}), tokenizer=tok)
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


def _sam3_vision(size: int) -> dict:
    """A tiny SAM 3 ViT + FPN (patch 14): feature maps at 4x, 2x and 1x the patch grid."""
    g = size // 14
    return dict(
        backbone_config=dict(
            model_type="sam3_vit_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, image_size=size, patch_size=14, window_size=2, global_attn_indexes=[1],
            pretrain_image_size=size,
        ),
        fpn_hidden_size=32,
        backbone_feature_sizes=[[4 * g, 4 * g], [2 * g, 2 * g], [g, g]],
    )


def write_tiny_sam2_hf(folder, size: int = 64, seed: int = 0):
    """A tiny random ``Sam2Model`` + ``Sam2Processor`` written with ``save_pretrained``."""
    from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, Sam2Processor

    import torch

    torch.manual_seed(seed)
    cfg = Sam2Config(
        vision_config=dict(
            backbone_config=dict(
                model_type="sam2_hiera_det_model", hidden_size=8, num_attention_heads=1, image_size=[size, size],
                blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[8, 16, 32, 64],
                num_attention_heads_per_stage=[1, 1, 1, 1], window_size_per_stage=[4, 4, 4, 4],
                global_attention_blocks=[3], window_positional_embedding_background_size=[2, 2],
            ),
            backbone_channel_list=[64, 32, 16, 8],
            backbone_feature_sizes=[[size // 4] * 2, [size // 8] * 2, [size // 16] * 2],
            fpn_hidden_size=32,
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=size, patch_size=16),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
    )
    Sam2Model(cfg).save_pretrained(folder)
    Sam2Processor(image_processor=Sam2ImageProcessor(size={"height": size, "width": size})).save_pretrained(folder)
    return folder


def write_tiny_sam3_tracker(folder, size: int = 56, seed: int = 0):
    """A tiny random ``Sam3TrackerModel`` + ``Sam3TrackerProcessor`` (SAM2's interface on SAM 3's ViT)."""
    from transformers import Sam3TrackerConfig, Sam3TrackerModel, Sam3TrackerProcessor, Sam2ImageProcessor

    import torch

    torch.manual_seed(seed)
    cfg = Sam3TrackerConfig(
        vision_config=dict(model_type="sam3_vision_model", **_sam3_vision(size)),
        prompt_encoder_config=dict(hidden_size=32, image_size=size, patch_size=14),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
    )
    Sam3TrackerModel(cfg).save_pretrained(folder)
    Sam3TrackerProcessor(image_processor=Sam2ImageProcessor(size={"height": size, "width": size})).save_pretrained(
        folder
    )
    return folder


def write_tiny_sam3(folder, size: int = 56, seed: int = 0):
    """A tiny random ``Sam3Model`` + ``Sam3Processor``; the tokenizer is borrowed from the bundled MiniLM
    model (SAM 3's CLIP tokenizer needs a download)."""
    from transformers import AutoTokenizer, Sam3Config, Sam3ImageProcessor, Sam3Model, Sam3Processor

    from cos3d.vision.labels_embedder import default_labels_model_dir

    tok = AutoTokenizer.from_pretrained(str(default_labels_model_dir()))
    import torch

    torch.manual_seed(seed)
    cfg = Sam3Config(
        vision_config=_sam3_vision(size),
        text_config=dict(
            model_type="clip_text_model", vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64,
            projection_dim=32, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32,
            pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
        ),
        geometry_encoder_config=dict(
            hidden_size=32, num_layers=1, num_attention_heads=2, intermediate_size=64, roi_size=2
        ),
        detr_encoder_config=dict(hidden_size=32, num_layers=1, num_attention_heads=2, intermediate_size=64),
        detr_decoder_config=dict(
            hidden_size=32, num_layers=1, num_queries=8, num_attention_heads=2, intermediate_size=64
        ),
        mask_decoder_config=dict(hidden_size=32, num_upsampling_stages=2, num_attention_heads=2),
    )
    Sam3Model(cfg).save_pretrained(folder)
    proc = Sam3Processor(image_processor=Sam3ImageProcessor(size={"height": size, "width": size}), tokenizer=tok)
    proc.save_pretrained(folder)
    return folder


class OracleConceptSegmenter:
    """A concept segmenter that reads the answer from the scene's instance maps: it stands in for SAM 3 in the
    oracle-2D protocol (tests and measurements only; never a query path). ``concepts`` maps a prompt to its
    ground-truth instance ids (absent prompts map to nothing); the image is recognised as one of the scene's
    frames by its pixels."""

    def __init__(self, scene: Scene, concepts: dict[str, list[int]]) -> None:
        import hashlib

        self.scene = scene
        self.concepts = {k.strip().lower(): list(v) for k, v in concepts.items()}
        self._frame = {hashlib.sha1(f.load_image().tobytes()).hexdigest(): f for f in scene.frames}
        self.calls = 0

    def segment(self, image: np.ndarray, text: str | None = None, *, exemplars=None, exemplar_labels=None):  # noqa: ANN001, ANN201
        import hashlib

        from cos3d.vision.sam3 import ConceptMasks

        self.calls += 1
        f = self._frame.get(hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest())
        if f is None:
            raise ValueError("the oracle segments the scene's own frames only")
        inst = f.load_instance()
        ids = [i for i in self.concepts.get((text or "").strip().lower(), []) if (inst == i).any()]
        masks = np.stack([inst == i for i in ids]) if ids else np.zeros((0, *inst.shape), bool)
        return ConceptMasks(masks=masks, scores=np.ones(len(ids), np.float32),
                            boxes=np.zeros((len(ids), 4), np.float32), presence=float(bool(ids)), prompt=text)
