"""A tiny 'training' run recorded with Tracelet's training-side API (used by scripts/demo).

Writes <TRACELET_LOGDIR>/demo/tiny_regression: event files, manifest (params with a secret
redacted, git, env), system-metrics sidecar and an artifact. No backend is contacted.
"""
from __future__ import annotations

import math
import random
import tempfile
import time
from pathlib import Path

import tracelet

exp = tracelet.start_logging(
    exp_name="tiny_regression",
    project="demo",
    backend=["mlflow", "aim"],
    config={"track_system": True, "metrics_interval": 0.2, "track_git": True, "track_env": True},
)
exp.log_params({"learning_rate": 0.05, "epochs": 60, "optimizer": "sgd",
                "api_key": "this-is-redacted", "model": {"layers": 2, "width": 16}})
random.seed(0)
w, b = 0.0, 0.0
for step in range(60):
    xs = [random.uniform(-1, 1) for _ in range(32)]
    ys = [3 * x + 0.5 + random.gauss(0, 0.1) for x in xs]
    grad_w = sum(2 * (w * x + b - y) * x for x, y in zip(xs, ys)) / len(xs)
    grad_b = sum(2 * (w * x + b - y) for x, y in zip(xs, ys)) / len(xs)
    w, b = w - 0.05 * grad_w, b - 0.05 * grad_b
    loss = sum((w * x + b - y) ** 2 for x, y in zip(xs, ys)) / len(xs)
    exp.writer.add_scalar("Loss/Train/MSE", loss, step)
    exp.log_metric("Params/w", w, step)
    exp.log_metric("Params/b", b, step)
    if step % 20 == 0:
        exp.log_histogram("Residuals", [w * x + b - y for x, y in zip(xs, ys)], step)
    time.sleep(0.01)
exp.log_text("Notes", f"final w={w:.3f} b={b:.3f} (true 3, 0.5); log10 loss {math.log10(loss):.2f}", 60)
cfg = Path(tempfile.mkdtemp()) / "config.yaml"
cfg.write_text("learning_rate: 0.05\nepochs: 60\n")
exp.log_artifact(str(cfg))
tracelet.stop_logging()
print(f"recorded run in {exp.run_dir}")
