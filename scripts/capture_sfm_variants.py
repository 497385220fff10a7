#!/usr/bin/env python
"""Structure-from-motion variants on a bench_capture video, per-frame pose errors against the truth.

A diagnostic (how docs/benchmarks.md's "Cause and fix (loop pairs)" table was measured): it stages the
video's frames as ``cos3d prepare video`` does, then runs pycolmap with one setting changed at a time
(COS3D_THREADS/OMP_NUM_THREADS=1, one pycolmap thread) and prints one JSON line with the registered
frames, points, rotation/translation errors after a similarity alignment, the camera, and step times.

    python scripts/capture_sfm_variants.py WALK.mp4 TRUTH_SCENE WORKDIR                 # cos3d's old defaults
    python scripts/capture_sfm_variants.py WALK.mp4 TRUTH_SCENE WORKDIR match=loop kf=30  # + loop keyframes
    python scripts/capture_sfm_variants.py WALK.mp4 TRUTH_SCENE WORKDIR match=exh v=1     # exhaustive, per frame

Settings (key=value): match=seq|loop|exh, ov (overlap), kf (loop keyframes, every ceil(n/kf)-th frame),
fmt=jpg|png|jpg100 (frame staging), cam (camera model), feat, peak, rpp=1 (refine the principal point),
gba=1 (a final global bundle adjustment), v=1 (per-frame errors). WALK.mp4 and TRUTH_SCENE are what
``scripts/bench_capture.py --no-train`` writes into its --workdir.
"""
import json, os, shutil, sys, time
from pathlib import Path
import numpy as np
import pycolmap as pc
from cos3d.capture import inputs
from cos3d.capture.align import pose_errors
from cos3d.readers import load_scene

pc.logging.minloglevel = 2
mp4, truth, work = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
V = dict(a.split("=") for a in sys.argv[4:])
fmt = V.get("fmt", "jpg")
frames = work / f"frames_{fmt}"
if not frames.is_dir():
    st = inputs.stage_video(mp4, frames, max_frames=150, max_side=1600)
    if fmt in ("png", "jpg100"):
        from PIL import Image
        for p in sorted(frames.glob("*.jpg")): p.unlink()
        print("restaged", fmt)
        from cos3d.capture.inputs import _frames
        for i, rgb in enumerate(_frames(mp4, 1600)):
            if i in st.source_index:
                Image.fromarray(rgb).save(frames / f"frame_{i:05d}.png") if fmt == "png" else Image.fromarray(rgb).save(frames / f"frame_{i:05d}.jpg", quality=100, subsampling=0)
names = sorted(p.name for p in frames.iterdir())
tag = "_".join(f"{k}{v}" for k, v in sorted(V.items())) or "base"
w = work / tag
shutil.rmtree(w, ignore_errors=True); w.mkdir(parents=True)
db = w / "db.db"
t = time.time()
ex = pc.FeatureExtractionOptions(); ex.num_threads = 1; ex.max_image_size = 1600
ex.sift.max_num_features = int(V.get("feat", 8192)); ex.sift.peak_threshold = float(V.get("peak", 0.002))
if "fo" in V: ex.sift.first_octave = int(V["fo"])
if V.get("dsp"): ex.sift.domain_size_pooling = True; ex.sift.estimate_affine_shape = V.get("aff", "0") == "1"
if V.get("up"): ex.sift.upright = True
if "edge" in V: ex.sift.edge_threshold = float(V["edge"])
ro = pc.ImageReaderOptions(); ro.camera_model = V.get("cam", "SIMPLE_PINHOLE")
pc.extract_features(db, frames, image_names=names, camera_mode=pc.CameraMode.SINGLE, reader_options=ro, extraction_options=ex, device=pc.Device.cpu)
te = time.time() - t; t = time.time()
mo = pc.FeatureMatchingOptions(); mo.num_threads = 1
if "ratio" in V: mo.sift.max_ratio = float(V["ratio"])
if V.get("guided"): mo.guided_matching = True
if "maxerr" in V: mo.max_error = float(V["maxerr"])  # may not exist
if V.get("match", "seq") == "seq":
    po = pc.SequentialPairingOptions(); po.overlap = int(V.get("ov", 10)); po.num_threads = 1
    if V.get("quad"): po.quadratic_overlap = True
    pc.match_sequential(db, matching_options=mo, pairing_options=po, device=pc.Device.cpu)
elif V["match"] == "loop":
    po = pc.SequentialPairingOptions(); po.overlap = int(V.get("ov", 10)); po.num_threads = 1
    pc.match_sequential(db, matching_options=mo, pairing_options=po, device=pc.Device.cpu)
    kmax = int(V.get("kf", 30)); step = -(-len(names) // kmax); kf = names[::step]
    (w / "pairs.txt").write_text("".join(f"{a} {b}\n" for i, a in enumerate(kf) for b in kf[i + 1:]))
    ip = pc.ImportedPairingOptions(); ip.match_list_path = w / "pairs.txt"
    pc.match_image_pairs(db, matching_options=mo, pairing_options=ip, device=pc.Device.cpu)
else:
    pc.match_exhaustive(db, matching_options=mo, device=pc.Device.cpu)
tm = time.time() - t; t = time.time()
po = pc.IncrementalPipelineOptions(); po.num_threads = 1; po.random_seed = 0; po.mapper.num_threads = 1; po.mapper.random_seed = 0
po.min_model_size = 3; po.mapper.init_min_num_inliers = 50; po.mapper.abs_pose_min_num_inliers = 15
if V.get("rpp"): po.ba_refine_principal_point = True
if "filt" in V: po.mapper.filter_max_reproj_error = float(V["filt"])
if "tri" in V: po.triangulation.complete_max_reproj_error = float(V["tri"]); po.triangulation.merge_max_reproj_error = float(V["tri"])
(w / "sparse").mkdir()
recs = pc.incremental_mapping(db, frames, w / "sparse", options=po)
rec = max(recs.values(), key=lambda r: r.num_reg_images())
tmap = time.time() - t; t = time.time()
if V.get("gba"):
    bo = pc.BundleAdjustmentOptions()
    try:
        bo.solver_options.max_num_iterations = 200; bo.solver_options.function_tolerance = 1e-10
        bo.solver_options.gradient_tolerance = 1e-12; bo.solver_options.parameter_tolerance = 1e-10
    except Exception as e: print("bo", e)
    if V["gba"] == "cauchy":
        bo.loss_function_type = pc.LossFunctionType.CAUCHY
    for _ in range(int(V.get("gbarep", 1))):
        rec.filter_all_points3D(float(V.get("gbafilt", 4.0)), 1.5) if hasattr(rec, "filter_all_points3D") else None
        pc.bundle_adjustment(rec, bo)
tba = time.time() - t
ts = load_scene(truth)
est, ref, nm = [], [], []
for im in sorted(rec.images.values(), key=lambda im: im.name):
    if not im.has_pose: continue
    M = np.eye(4); M[:3] = im.cam_from_world().matrix(); est.append(np.linalg.inv(M))
    idx = int(im.name.split("_")[1].split(".")[0]); ref.append(ts.frame(str(idx)).camera.c2w); nm.append(idx)
err = pose_errors(np.array(est), np.array(ref))
s = err.summary()
cam = next(iter(rec.cameras.values()))
print(json.dumps({"tag": tag, "reg": len(est), "pts": rec.num_points3D(), **{k: round(v, 3) for k, v in s.items()},
                  "cam": [round(x, 2) for x in cam.params], "t": [round(te,1), round(tm,1), round(tmap,1), round(tba,1)],
                  "mre": round(rec.compute_mean_reprojection_error(), 3)}))
if V.get("v"):
    o = np.argsort(-err.rotation_deg)[:8]
    print("worst", [(nm[i], round(float(err.rotation_deg[i]), 2), round(float(100*err.translation[i]/err.extent), 2)) for i in o])
    print("rot", [round(float(x), 2) for x in err.rotation_deg])
