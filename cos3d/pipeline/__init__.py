"""The training pipeline and its artifacts: the training config, the session, one function per stage,
view selection, stage 0 (reconstruction), the run folder and its files, and loading a trained run."""
