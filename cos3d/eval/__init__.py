"""Evaluation protocols (README "What is measured"): ``cos3d eval lerf|scannet|tabletop``.

- :mod:`cos3d.eval.metrics`: mask IoU, pair summaries (mIoU, mAcc@0.25/0.5), per-point semantic metrics,
  presence accuracy with its baselines;
- :mod:`cos3d.eval.heldout`: held-out evaluation prompts and the overlap checks;
- :mod:`cos3d.eval.tabletop`: our oracle-2D tabletop protocol (text, held-out paraphrases, plurals,
  absent things, parts; image prompts on the lift path);
- :mod:`cos3d.eval.ablation`: instance-only / language-only / collaborative branches and training variants;
- :mod:`cos3d.eval.lerf`: LERF-OVS 3D selection on LangSplat's released labels;
- :mod:`cos3d.eval.scannet`: OpenGaussian's ScanNet per-point protocol.
"""
