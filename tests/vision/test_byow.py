"""Bring your own weights (README "Bring your own weights"): tiny random models saved in exactly the layouts a
user's weights come in, found by ``cos3d doctor`` and loaded by the providers' own loaders.

- the Hugging Face hub cache, as ``hf download`` leaves it (``models--ORG--NAME/refs/main`` naming a revision,
  ``snapshots/<rev>/`` files linking into ``blobs/``; checked with huggingface_hub's own ``scan_cache_dir``),
  pointed to by ``HF_HUB_CACHE`` with ``HF_HUB_OFFLINE=1``; the hub ids are the defaults
  (facebook/sam2.1-hiera-large, facebook/sam3, google/siglip-base-patch16-224), so no flag is given;
- ``save_pretrained`` folders and an open_clip state-dict checkpoint with its model-config JSON, by flag and by
  environment variable.

The README's commands are read from its "Bring your own weights" block and run as written, in a folder laid
out like the README's; one substitution: the README's ``--clip-model ViT-B-16`` becomes the tiny test
architecture's model-config JSON (a ViT-B-16 checkpoint is 600 MB). The hub-cache commands run in a subprocess
(huggingface_hub reads ``HF_HUB_CACHE`` / ``HF_HUB_OFFLINE`` when it is imported). Random weights fail the
doctor's real check (exit 3), so each check row is asserted to show the model ran (masks counted, similarities
printed), not that it passed.

Missing weights: one line naming the flag, for every model, through the command line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cos3d.cli import entrypoint

ROOT = Path(__file__).resolve().parents[2]
HUB_MODELS = ("facebook/sam2.1-hiera-large", "facebook/sam3", "google/siglip-base-patch16-224")
ENV_VARS = ("COS3D_SAM2_MODEL", "COS3D_SAM3_MODEL", "COS3D_SAM2_CHECKPOINT", "COS3D_CLIP_CHECKPOINT",
            "COS3D_CLIP_MODEL", "COS3D_SIGLIP_MODEL", "HF_HOME", "HF_HUB_CACHE")


def add_to_hub_cache(cache: Path, repo_id: str, folder: Path) -> str:
    """Lay ``folder``'s files out in the hub cache ``cache`` as a download of ``repo_id`` leaves them: blobs named
    by their sha256, ``snapshots/<rev>/`` relative links to them, ``refs/main`` holding ``<rev>``. Returns ``rev``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    rev = hashlib.sha1(repo_id.encode()).hexdigest()  # a 40-hex commit id
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            data = f.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = repo / "snapshots" / rev / f.relative_to(folder)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(rev)
    return rev


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A folder laid out like the README's: ``hf-hub/`` (a hub cache) and ``weights/`` (folders, a checkpoint)."""
    from cos3d.testing.vision import write_random_siglip, write_tiny_openclip, write_tiny_sam2_hf, write_tiny_sam3

    root = tmp_path_factory.mktemp("byow")
    w = root / "weights"
    write_tiny_sam2_hf(w / "sam2.1-hiera-large")
    write_tiny_sam3(w / "sam3")
    write_random_siglip(w / "siglip-base-patch16-224")
    cfg, ckpt = write_tiny_openclip(w / "open_clip")
    ckpt.rename(w / "open_clip" / "open_clip_pytorch_model.bin")
    for repo, name in zip(HUB_MODELS, ("sam2.1-hiera-large", "sam3", "siglip-base-patch16-224")):
        add_to_hub_cache(root / "hf-hub", repo, w / name)
    return root


def readme_commands() -> list[str]:
    """The shell lines of the README's "Bring your own weights" block (continuations joined, comments dropped)."""
    text = (ROOT / "README.md").read_text()
    sec = text.split("## Bring your own weights", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", sec, re.S)
    assert block, "the README's Bring your own weights section has no bash block"
    lines = block.group(1).replace("\\\n", " ").splitlines()
    return [ln.split(" #")[0].strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def _tiny(words: list[str], home: Path) -> list[str]:
    """The README's ``ViT-B-16`` (``--clip-model ViT-B-16``, ``COS3D_CLIP_MODEL=ViT-B-16``) as the tiny test
    architecture's model-config JSON (module docstring)."""
    tiny = str(home / "weights" / "open_clip" / "cos3d-test-tiny-clip.json")
    return [w[: -len("ViT-B-16")] + tiny if w == "ViT-B-16" or w.endswith("=ViT-B-16") else w for w in words]


def run_readme(home: Path, monkeypatch, capsys) -> list[tuple[str, dict, int, str]]:
    """Run the README block's commands in ``home`` like a shell would (``export`` and ``VAR=value cmd``);
    every ``cos3d doctor`` with ``--json`` added. A command that sets ``HF_*`` runs in a fresh process
    (huggingface_hub reads them at import), the others in this one. Returns ``(line, env, exit code, stdout)``."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), COS3D_THREADS="1", OMP_NUM_THREADS="1",
               HOME=str(home))  # the default cache ~/.cache/huggingface/hub is empty here
    monkeypatch.chdir(home)
    out = []
    for line in readme_commands():
        words = _tiny(shlex.split(line.replace("$PWD", str(home))), home)
        if words[0] == "export":
            env.update(w.split("=", 1) for w in words[1:])
            continue
        local = dict(env)
        while "=" in words[0]:
            k, v = words.pop(0).split("=", 1)
            local[k] = v
        assert words[:2] == ["cos3d", "doctor"], f"unexpected README command: {line}"
        args = words[1:] + ["--json", "--device", "cpu"]
        if any(k.startswith("HF_") and os.environ.get(k) != local[k] for k in local):
            p = subprocess.run([sys.executable, "-m", "cos3d", *args], env=local, capture_output=True, text=True)
            out.append((line, local, p.returncode, p.stdout))
            continue
        for k in ENV_VARS:
            monkeypatch.delenv(k, raising=False)
        for k, v in local.items():
            if k.startswith("COS3D_"):
                monkeypatch.setenv(k, v)
        capsys.readouterr()
        code = entrypoint(args)
        out.append((line, local, code, capsys.readouterr().out))
    return out


def _rows(stdout: str) -> tuple[dict, dict]:
    d = json.loads(stdout)
    return {(r["group"], r["item"]): r for r in d["rows"]}, d


def test_hub_cache_layout_is_the_real_one(home):
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(home / "hf-hub")
    assert not info.warnings
    repos = {r.repo_id: r for r in info.repos}
    assert set(repos) == set(HUB_MODELS)
    for r in repos.values():
        (rev,) = r.revisions
        assert rev.refs == frozenset({"main"}) and {"config.json", "model.safetensors"} <= {f.file_name for f in rev.files}


def test_readme_commands_find_and_load_the_weights(home, monkeypatch, capsys):
    runs = run_readme(home, monkeypatch, capsys)
    assert len(runs) == 3, [r[0] for r in runs]
    (hub_line, hub_env, hub_code, hub_out), (flag_line, _, flag_code, flag_out), (env_line, env_env, env_code, env_out) = runs
    # 1. the hub cache: every default hub id found there, no flag given; the real check loaded and ran them
    assert hub_env["HF_HUB_CACHE"] == str(home / "hf-hub")
    rows, d = _rows(hub_out)
    for item, repo in (("sam2-hf", HUB_MODELS[0]), ("sam3", HUB_MODELS[1]), ("siglip", HUB_MODELS[2])):
        assert rows[("weights", item)]["status"] == "ok", rows[("weights", item)]
        assert rows[("weights", item)]["detail"] == f"{repo} (default; in the hub cache)"
    assert rows[("weights", "openclip")]["status"] == "missing"
    assert d["masks"] == "sam2-hf" and d["embedder"] == "siglip"
    assert re.match(r"\d+ masks on coffee\.png", rows[("check", "sam2-hf")]["detail"])  # SAM2 ran on the photo
    assert len(re.findall(r"-?\d\.\d{3}", rows[("check", "siglip")]["detail"])) == 6  # 3 texts x 2 photos
    assert hub_code == d["exit_code"] and hub_code in (0, 3)  # random weights: the check fails (3)
    # 2. save_pretrained folders + an open_clip checkpoint with its model config, by flag
    rows, d = _rows(flag_out)
    assert rows[("weights", "sam2-hf")]["detail"].endswith("(flag; local folder)")
    assert rows[("weights", "siglip")]["detail"].endswith("(flag; local folder)")
    assert rows[("weights", "openclip")]["status"] == "ok" and "open_clip_pytorch_model.bin (flag)" in rows[("weights", "openclip")]["detail"]
    assert d["masks"] == "sam2-hf" and d["embedder"] == "openclip"
    assert len(re.findall(r"-?\d\.\d{3}", rows[("check", "openclip")]["detail"])) == 6
    assert re.match(r"\d+ masks on coffee\.png", rows[("check", "sam2-hf")]["detail"])
    assert flag_code == d["exit_code"] in (0, 3)
    # 3. the same by environment variable
    rows, d = _rows(env_out)
    assert env_env["COS3D_SAM2_MODEL"] == "weights/sam2.1-hiera-large"
    assert rows[("weights", "sam2-hf")]["detail"] == "weights/sam2.1-hiera-large ($COS3D_SAM2_MODEL; local folder)"
    assert "($COS3D_CLIP_CHECKPOINT)" in rows[("weights", "openclip")]["detail"]
    assert d["masks"] == "sam2-hf" and d["embedder"] == "openclip" and env_code == d["exit_code"] in (0, 3)
    assert len(re.findall(r"-?\d\.\d{3}", rows[("check", "openclip")]["detail"])) == 6  # the checkpoint loaded


def test_providers_load_the_hub_cache_weights(home):
    """create() of each default provider, offline, reads the hub cache's files: the loaded tensors are the saved ones."""
    code = """
import json, sys
from cos3d.vision.registry import create_mask_provider, create_embedder
from cos3d.vision.sam3 import create_concept_segmenter
out = {}
for name, obj in (("sam2-hf", create_mask_provider("sam2-hf", device="cpu", points_per_side=2)),
                  ("siglip", create_embedder("siglip", device="cpu")),
                  ("sam3", create_concept_segmenter("sam3", device="cpu"))):
    sd = obj.model.state_dict()
    out[name] = {"id": obj.model_id, "sums": {k: float(v.double().sum()) for k, v in sd.items() if v.is_floating_point()}}
print(json.dumps(out))
"""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(HF_HUB_CACHE=str(home / "hf-hub"), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), COS3D_THREADS="1")
    p = subprocess.run([sys.executable, "-c", code], cwd=home, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["sam2-hf"]["id"] == "sam2-hf:facebook/sam2.1-hiera-large@64"
    assert got["siglip"]["id"] == "siglip:google/siglip-base-patch16-224"
    assert got["sam3"]["id"] == "sam3-concepts:facebook/sam3"
    from safetensors.torch import load_file

    for name, folder in (("sam2-hf", "sam2.1-hiera-large"), ("siglip", "siglip-base-patch16-224"), ("sam3", "sam3")):
        saved = load_file(home / "weights" / folder / "model.safetensors")
        common = set(saved) & set(got[name]["sums"])
        assert len(common) > 0.9 * len(saved), (name, len(common), len(saved))
        for k in common:
            assert abs(float(saved[k].double().sum()) - got[name]["sums"][k]) < 1e-6 * (1 + abs(got[name]["sums"][k])), k


def test_interrupted_download_is_not_reported_found(home, tmp_path, monkeypatch):
    """A snapshot with config.json but no weights file (an interrupted download) is missing, with what to do."""
    from cos3d.commands import doctor

    cache = tmp_path / "hub"
    part = tmp_path / "part"
    part.mkdir()
    (part / "config.json").write_bytes((home / "weights" / "sam2.1-hiera-large" / "config.json").read_bytes())
    add_to_hub_cache(cache, HUB_MODELS[0], part)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # doctor reads it per call
    status, detail = doctor._hf_weights(HUB_MODELS[0], "default", "--sam2-model")
    assert status == "missing" and "no weights file" in detail and "hf download facebook/sam2.1-hiera-large" in detail
    status, detail = doctor._hf_weights(str(part), "flag", "--sam2-model")
    assert status == "missing" and "without a weights file" in detail


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--masks", "sam2-hf", "--embedder", "siglip"], "--sam2-model"),
        (["--masks", "sam2-hf", "--embedder", "siglip", "--sam2-model", "nope/"], "--sam2-model"),
        (["--masks", "sam3", "--embedder", "siglip"], "--sam3-model"),
        (["--masks", "sam2", "--embedder", "siglip"], "--sam2-checkpoint"),
        (["--masks", "dataset", "--embedder", "openclip"], "--clip-checkpoint"),
        (["--masks", "dataset", "--embedder", "openclip", "--clip-checkpoint", "nope.pt"], "--clip-checkpoint"),
        (["--masks", "dataset", "--embedder", "siglip"], "--siglip-model"),
        (["--masks", "dataset", "--embedder", "siglip", "--siglip-model", "nope/"], "--siglip-model"),
    ],
)
def test_missing_weights_one_line_naming_the_flag(args, flag, tmp_path, monkeypatch, capsys):
    from cos3d.testing.vision import write_synthetic_scene

    for k in ENV_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)
    scene = write_synthetic_scene(tmp_path / "s", n_frames=1)
    code = entrypoint(["prepare", "masks", "--scene", str(scene.root), "--cache", str(tmp_path / "c"), *args])
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and flag in err, err
    assert err.startswith("cos3d prepare: error:") and not (tmp_path / "c").exists()


def test_concept_segmenter_missing_weights_one_line(trained_run, monkeypatch, capsys):
    monkeypatch.delenv("COS3D_SAM3_MODEL", raising=False)
    code = entrypoint(["query", "--run", str(trained_run), "--branch", "2d", "mug"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--sam3-model" in err, err
