"""scripts/bench_models.py end to end with ``--tiny`` (tiny configs of every architecture, built with random
weights, saved and loaded through cos3d's loaders, timed): the table, the last JSON line and ``--out``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_models.py"


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0


# ~18 CPU-seconds (five tiny models built, saved, loaded and timed): kept in the default run, since nothing else
# checks the benchmark script itself
def test_bench_models_tiny_end_to_end(tmp_path, capsys, one_torch_thread):
    spec = importlib.util.spec_from_file_location("bench_models", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "models.json"
    assert bench.main(["--tiny", "--threads", "1", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    last = json.loads(lines[-1])
    assert json.loads(out.read_text()) == last
    assert lines[0].split()[:4] == ["architecture", "task", "params", "size"]
    assert last["tiny"] is True and last["gpu"] == "unmeasured" and last["failed"] == {}
    assert last["sizes"] == ["64x48", "96x72"] and set(last["results"]) == set(bench.ARCHS)
    for arch, r in last["results"].items():
        assert r["arch"] == arch and r["task"] == bench.ARCHS[arch]["task"] and r["config"] == "tiny test config"
        assert r["params"] > 1000 and _positive(r["weights_mib"]) and _positive(r["load"]["s"])
        assert [v["size"] for v in r["views"]] == last["sizes"]
        for v in r["views"]:
            shipped = v["as_shipped"]
            assert _positive(shipped["s"]) and _positive(shipped["cpu_s"]) and _positive(shipped["peak_rss_mib"])
            assert shipped["cuda_peak_mib"] is None and _positive(v["estimate_s"])
            if r["task"] == "masks":  # the provider's own generate(), its stages timed inside it
                assert v["decoder_batches"] == 1 and v["clicks"] == 16
                assert _positive(v["encode_s"]) and _positive(v["decode_s"]) and v["filter_s"] >= 0
                assert abs(v["forward_s"] - (v["encode_s"] + v["decode_s"] + v["upsample_s"] + v["filter_s"])) < 1e-3
                # --iou-pass all (default): every candidate passes the IoU filter, so every one is upsampled
                assert v["iou_pass"] == "all" and v["upsampled"] == v["candidates"] == 3 * v["clicks"]
                fw = v["forward_at_pass_share_s"]
                assert _positive(v["per_candidate_s"]) and fw["0.25"] <= fw["0.5"] <= fw["1.0"]
                assert abs(fw["1.0"] - v["forward_s"]) < 2e-3
                assert 0 <= v["kept"] <= v["kept_before_nms"] <= 3 * v["clicks"]
                assert sum(v["kept_per_level"].values()) == v["kept"]
                assert v["nms_realistic"]["masks_per_level"] == 4 and 0 < v["nms_realistic"]["kept"] <= 12
                assert r["settings"]["pred_iou_thresh"] == 0.7 and r["model_id"].startswith("sam2-hf:local-")
            elif r["task"] == "concept":
                assert 0.0 <= v["presence"] <= 1.0 and v["instances"] >= 0
                assert r["model_id"].startswith("sam3-concepts:local-")
            else:
                assert v["crops"] == 6 and abs(v["per_crop_ms"] - 1000 * shipped["s"] / 6) < 0.1  # s is rounded to ms
    # the 1,000-frame scan: the train presets' view counts (CPU: fast, CUDA: full), masks + crops per view
    for size, scan in last["scan_1000_frames"].items():
        cpu, gpu = scan["cpu (preset fast)"], scan["gpu (preset full)"]
        assert cpu["views"] == bench.preset_max_views("fast") == 100 and gpu["views"] == 300
        per_view = sum(next(v["estimate_s"] for v in last["results"][a]["views"] if v["size"] == size)
                       for a in ("sam2.1-hiera-large", "openclip-vit-b-16"))
        assert abs(cpu["per_view_s"] - per_view) < 0.011 and abs(cpu["total_s"] - 100 * cpu["per_view_s"]) < 0.6
        assert gpu["total_s"] == "unmeasured" and _positive(cpu["cpu_s_per_view"]) and cpu["threads"] == 1
        assert abs(cpu["quiet_estimate_h"] - 100 * cpu["cpu_s_per_view"] / 3600) < 0.01
