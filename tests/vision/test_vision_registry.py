"""The one provider table (cos3d/vision/registry.py): every name builds through its small config, from the
commands' flat ModelsConfig and by name; the configs and ModelsConfig agree; no name is handled elsewhere;
``--segmenter auto`` decided in one function. Tiny random models, no downloads."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import typing
from pathlib import Path

import pytest

import cos3d
from cos3d.core.errors import Cos3dError, MissingWeightsError
from cos3d.testing.vision import (
    write_random_sam2_checkpoint,
    write_random_siglip,
    write_synthetic_scene,
    write_tiny_openclip,
    write_tiny_sam2_hf,
    write_tiny_sam3_tracker,
)
from cos3d.vision import models as models_mod
from cos3d.vision.models import ModelsConfig, choose_segmenter
from cos3d.vision.prompts import PromptSegmenter
from cos3d.vision.registry import PROVIDERS, create, create_mask_provider, list_prompt_segmenters, provider_config

PACKAGE = Path(cos3d.__file__).resolve().parent
IMPLEMENTATIONS = {"sam2_masks", "sam2_hf", "sam3", "dataset_masks", "classical_masks", "openclip_embedder",
                   "siglip_embedder", "labels_embedder", "minilm", "gap_standin"}
"""cos3d/vision modules that are providers themselves (they may name their own family)."""


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """ModelsConfig fields pointing every weights-backed provider at a tiny random model, and a scene."""
    tmp = tmp_path_factory.mktemp("registry")
    clip_cfg, clip_ckpt = write_tiny_openclip(tmp / "clip")
    return {
        "scene": write_synthetic_scene(tmp / "scene", n_frames=1, width=48, height=32),
        "models": dict(
            sam2_checkpoint=write_random_sam2_checkpoint(tmp / "sam2" / "sam2.1_hiera_tiny.pt"),
            sam2_image_size=256,
            sam2_model=str(write_tiny_sam2_hf(tmp / "sam2hf")),
            sam3_model=str(write_tiny_sam3_tracker(tmp / "sam3trk")),
            clip_model=str(clip_cfg),
            clip_checkpoint=clip_ckpt,
            siglip_model=str(write_random_siglip(tmp / "siglip")),
            points_per_side=2,
        ),
    }


def test_every_name_builds_through_its_config(weights):
    """Each (kind, name) of the table: ModelsConfig → provider_config → create, the provider of that name;
    the chosen ones through ModelsConfig's own create_* too."""
    scene, fields = weights["scene"], weights["models"]
    built = set()
    for kind, table in PROVIDERS.items():
        for name, cls in table.items():
            models = ModelsConfig(**fields)
            cfg = models.provider_config(kind, name)
            assert type(cfg) is cls
            for mine, theirs in cls.FROM_MODELS.items():  # it carries the settings that apply to it
                assert getattr(cfg, mine) == getattr(models, theirs), (kind, name, mine)
            obj = cfg.create(device="cpu", scene=scene)
            if kind == "segmenter":
                assert isinstance(obj, PromptSegmenter), (name, obj)
            else:
                assert obj.name == name, (kind, name, obj.name)
            built.add((kind, name))
    assert built == {(k, n) for k, t in PROVIDERS.items() for n in t}
    sam3 = ModelsConfig(**{**fields, "masks": "sam3", "embedder": "siglip"})
    prov = sam3.create_provider(scene, device="cpu")
    assert prov.name == "sam3" and prov.points_per_side == 2
    assert sam3.create_embedder(device="cpu").name == "siglip"
    assert type(sam3.create_prompt_segmenter(device="cpu")).__name__ == "SAM3TrackerPromptSegmenter"
    assert ModelsConfig(masks="classical", embedder="openclip").create_prompt_segmenter() is None


def test_by_name_settings_and_unknowns(weights):
    """create_*(name, **settings): the config's fields, device and scene; anything else is one loud line."""
    scene = weights["scene"]
    p = create_mask_provider("dataset", scene=scene, perturb=0.2, seed=4, min_area=3)
    assert (p.perturb, p.seed, p.min_area) == (0.2, 4, 3)
    with pytest.raises(Cos3dError, match="mask provider classical: unknown setting.*checkpoint.*known: method"):
        create_mask_provider("classical", checkpoint="x.pt")
    with pytest.raises(Cos3dError, match="needs the scene|give it the scene"):
        create_mask_provider("dataset")
    with pytest.raises(Cos3dError, match="unknown prompt segmenter 'sam9'.*sam2-hf, sam3, sam2"):
        create("segmenter", "sam9")
    with pytest.raises(Cos3dError, match="unknown embedder 'clip'"):
        ModelsConfig().provider_config("embedder", "clip")


def test_configs_match_models_config_and_the_implementations():
    """Every FROM_MODELS entry links a field of the config to a ModelsConfig field; every ModelsConfig field
    (but the two choices) reaches some provider; config defaults equal the constructors' defaults."""
    import cos3d.vision.classical_masks as classical
    import cos3d.vision.dataset_masks as dataset
    import cos3d.vision.gap_standin as gap_standin
    import cos3d.vision.labels_embedder as labels
    import cos3d.vision.openclip_embedder as openclip
    import cos3d.vision.sam2_hf as sam2_hf
    import cos3d.vision.sam2_masks as sam2
    import cos3d.vision.siglip_embedder as siglip

    top = {f.name: f for f in dataclasses.fields(ModelsConfig)}
    read = set()
    for table in PROVIDERS.values():
        for cls in table.values():
            mine = {f.name for f in dataclasses.fields(cls)}
            assert set(cls.FROM_MODELS) <= mine, cls
            assert set(cls.FROM_MODELS.values()) <= set(top), cls
            read |= set(cls.FROM_MODELS.values())
            for k, theirs in cls.FROM_MODELS.items():  # the flag's default is the provider's default
                assert top[theirs].default == getattr(cls(), k), (cls.__name__, k, theirs)
    assert read == set(top) - {"masks", "embedder"}
    impl = {
        ("masks", "sam2"): sam2.SAM2MaskProvider, ("masks", "sam2-hf"): sam2_hf.HFSamMaskProvider,
        ("masks", "sam3"): sam2_hf.HFSamMaskProvider, ("masks", "dataset"): dataset.DatasetMaskProvider,
        ("masks", "classical"): classical.ClassicalMaskProvider, ("embedder", "openclip"): openclip.OpenCLIPEmbedder,
        ("embedder", "siglip"): siglip.SiglipEmbedder, ("embedder", "labels"): labels.LabelsEmbedder,
        ("embedder", "labels-gap"): gap_standin.ModalityGapStandIn,
        ("segmenter", "sam2"): sam2.SAM2PromptSegmenter.load, ("segmenter", "sam2-hf"): sam2_hf.HFSamPromptSegmenter,
        ("segmenter", "sam3"): sam2_hf.HFSamPromptSegmenter,
    }
    assert set(impl) == {(k, n) for k, t in PROVIDERS.items() for n in t}
    for (kind, name), target in impl.items():
        params = inspect.signature(target).parameters
        cfg = provider_config(kind, name)
        for f in dataclasses.fields(cfg):
            p = params.get(f.name)
            assert p is not None, (kind, name, f.name)
            assert p.default == getattr(cfg, f.name), (kind, name, f.name, p.default)
    assert provider_config("masks", "sam2").hub_id == sam2.DEFAULT_SAM2_HUB_ID
    assert provider_config("embedder", "openclip").pretrained == openclip.DEFAULT_CLIP_PRETRAINED


def test_names_agree_with_the_table():
    """The CLI's choices are the table's names (--masks, --embedder, --segmenter of cos3d query)."""
    from cos3d.commands.query import QueryConfig

    assert set(typing.get_args(models_mod.MaskProviderName)) == set(PROVIDERS["masks"])
    assert set(typing.get_args(models_mod.EmbedderName)) == set(PROVIDERS["embedder"])
    choices = {"auto", "none", *PROVIDERS["segmenter"]}
    assert set(models_mod.SEGMENTER_CHOICES) == choices
    assert set(typing.get_args(models_mod.SegmenterChoice)) == choices
    hints = typing.get_type_hints(QueryConfig)
    assert set(typing.get_args(hints["segmenter"])) == choices


def _names_compared(tree: ast.AST, names: set[str]) -> list[int]:
    """Lines comparing something (==, !=, in) with a provider name or a collection holding one."""
    def holds(node: ast.AST) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in names
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(holds(e) for e in node.elts)
        return False

    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Compare)
            and any(holds(x) for x in (n.left, *n.comparators))]


def test_no_name_is_handled_outside_the_registry():
    """Outside registry.py and the implementations themselves, no code branches on a model's name and
    none names a provider class: building goes through the table. (``dataset`` / ``labels`` are also the
    oracle-2D protocol's names, which validation and reports check.)"""
    names = {n for t in PROVIDERS.values() for n in t} - {"dataset", "labels"}
    classes = {"SAM2MaskProvider", "HFSamMaskProvider", "SAM3TrackerMaskProvider", "DatasetMaskProvider",
               "ClassicalMaskProvider", "OpenCLIPEmbedder", "SiglipEmbedder", "LabelsEmbedder", "ModalityGapStandIn",
               "SAM2PromptSegmenter", "HFSamPromptSegmenter", "SAM3TrackerPromptSegmenter"}
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "testing" or rel == Path("vision/registry.py") or (
                rel.parts[0] == "vision" and path.stem in IMPLEMENTATIONS):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        bad += [f"{rel}:{line}: compares with a provider name" for line in _names_compared(tree, names)]
        for n in ast.walk(tree):
            used = (n.id if isinstance(n, ast.Name) else n.attr if isinstance(n, ast.Attribute)
                    else None)
            if used in classes or isinstance(n, ast.ImportFrom) and any(a.name in classes for a in n.names):
                bad.append(f"{rel}:{n.lineno}: names a provider class")
    assert not bad, bad


def test_vision_imports_neither_query_nor_pipeline():
    """cos3d.vision stands below the query and the pipeline: no import of them, not even for type hints."""
    bad = []
    for path in sorted((PACKAGE / "vision").glob("*.py")):
        for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            mods = ([a.name for a in n.names] if isinstance(n, ast.Import)
                    else [n.module or ""] if isinstance(n, ast.ImportFrom) else [])
            bad += [f"{path.name}:{n.lineno} {m}" for m in mods
                    if m.startswith(("cos3d.query", "cos3d.pipeline", "cos3d.commands", "cos3d.serve"))]
    assert not bad, bad


class _Seg:
    model_id = "probe-seg"

    def segment(self, image, *, points=None, point_labels=None, box=None, level=None):  # pragma: no cover
        raise AssertionError


def test_choose_segmenter_is_the_auto_rule(weights):
    """--segmenter auto: a model named in the overrides, else the run's SAM when it loads, else none (said)."""
    fields = weights["models"]
    seg = _Seg()
    assert choose_segmenter(seg, ModelsConfig()) == (seg, "probe-seg")
    assert choose_segmenter(None, ModelsConfig())[0] is None
    assert choose_segmenter("none", ModelsConfig(masks="sam3"), device="cpu") == (
        None, "no 2D segmenter (--segmenter none)")
    with pytest.raises(Cos3dError, match="segmenter: must be one of"):
        choose_segmenter("sam9", ModelsConfig())
    # an oracle-2D run: none, and the note says why
    s, note = choose_segmenter("auto", ModelsConfig(), device="cpu")
    assert s is None and "'dataset' (offline)" in note
    # a model named in the overrides is the one wanted, whatever the run trained with
    s, note = choose_segmenter("auto", ModelsConfig(), {"sam3_model": fields["sam3_model"], "sam2_model": None},
                               device="cpu")
    assert type(s).__name__ == "SAM3TrackerPromptSegmenter" and note.startswith("sam3-hf:")
    # ... several named: the table's order of preference (sam2-hf first)
    s, _ = choose_segmenter("auto", ModelsConfig(), {"sam3_model": fields["sam3_model"],
                                                     "sam2_model": fields["sam2_model"]}, device="cpu")
    assert type(s).__name__ == "HFSamPromptSegmenter"
    assert list_prompt_segmenters()[0] == "sam2-hf"
    # the run's own SAM: loads → it; missing weights → none, with the reason
    s, note = choose_segmenter("auto", ModelsConfig(masks="sam2-hf", embedder="siglip",
                                                    sam2_model=fields["sam2_model"]), device="cpu")
    assert type(s).__name__ == "HFSamPromptSegmenter" and note.startswith("sam2-hf:")
    s, note = choose_segmenter("auto", ModelsConfig(masks="sam3", embedder="siglip",
                                                    sam3_model=str(weights["scene"].root / "nope")), device="cpu")
    assert s is None and "the run's sam3 weights did not load" in note and "--sam3-model" in note
    # explicitly asked: missing weights raise, naming the flag
    with pytest.raises(MissingWeightsError, match="--sam3-model"):
        choose_segmenter("sam3", ModelsConfig(), {"sam3_model": str(weights["scene"].root / "nope")}, device="cpu")
