"""Every code example of the user guide (USER-GUIDE.md, "Best Practices") runs as a test.

The examples are copied verbatim below; each test gives an example the names it assumes
(``writer``, ``step``, ``model`` ...), runs it with a temporary logdir and checks that the run
directory holds what the guide implies. Backends named in the examples ("wandb", "mlflow") are
only recorded: the recorder never contacts one, so all of this works offline.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import tracelet
from tests.recorder.recorder_helpers import read_run, run_dirs
from tracelet.redact import REDACTED

REPO = Path(__file__).resolve().parents[2]
GUIDE_CANDIDATES = [REPO / "shared" / "USER-GUIDE.md", REPO.parent / "shared" / "USER-GUIDE.md"]

# The guide's examples, verbatim (test_examples_match_the_guide keeps them in step).
EXAMPLES = {
    "naming": r'''
# Good: Descriptive experiment names
exp_name = f"resnet50_imagenet_{datetime.now().strftime('%Y%m%d_%H%M')}"
project = "image_classification"

# Good: Hierarchical metric names
writer.add_scalar('Loss/Train/CrossEntropy', ce_loss, step)
writer.add_scalar('Loss/Train/L2Regularization', l2_loss, step)
writer.add_scalar('Metrics/Accuracy/Train', train_acc, step)
writer.add_scalar('Metrics/Accuracy/Validation', val_acc, step)

# Avoid: Vague or flat naming
exp_name = "experiment_1"
writer.add_scalar('loss', loss, step)
writer.add_scalar('acc', acc, step)
''',
    "project_structure": r'''
# Development phase
tracelet.start_logging(
    exp_name="model_v1_dev",
    project="sentiment_analysis_dev",
    backend="mlflow"
)

# Production experiments
tracelet.start_logging(
    exp_name="model_v2_prod",
    project="sentiment_analysis_prod",
    backend=["mlflow", "wandb"]  # Multi-backend for production
)
''',
    "logging_frequency": r'''
# High-frequency: Essential metrics every step
writer.add_scalar('Loss/Train', loss, step)

# Medium-frequency: Performance metrics every epoch
if step % steps_per_epoch == 0:
    writer.add_scalar('Accuracy/Validation', val_acc, epoch)
    writer.add_scalar('Learning_Rate', scheduler.get_lr()[0], epoch)

# Low-frequency: Expensive operations occasionally
if step % 1000 == 0:
    # Histograms of model parameters
    for name, param in model.named_parameters():
        writer.add_histogram(f'Parameters/{name}', param, step)

if step % 5000 == 0:
    # Sample predictions and visualizations
    writer.add_image('Predictions', prediction_grid, step)
''',
    "backend_dev": r'''
tracelet.start_logging("dev_experiment", backend="mlflow")
''',
    "backend_team": r'''
tracelet.start_logging("team_experiment", backend="wandb")
''',
    "backend_prod": r'''
tracelet.start_logging(
    "prod_experiment",
    backend=["mlflow", "wandb"]  # Local + cloud backup
)
''',
    "memory_management": r'''
# Configure memory-efficient logging
tracelet.start_logging(
    "memory_efficient_exp",
    backend="mlflow",
    config={
        "track_system": True,
        "metrics_interval": 30.0,  # Reduce system monitoring frequency
        "max_image_size": "512KB", # Limit image sizes
        "track_tensorboard": True,
        "track_lightning": True,
    }
)

# In your training loop
if step % 100 == 0:  # Reduce logging frequency
    # Resize large images before logging
    small_image = F.interpolate(large_image, size=(224, 224))
    writer.add_image('Sample', small_image, step)
''',
    "network_efficiency": r'''
# Good: Batch related metrics
metrics = {
    'Loss/Train': train_loss,
    'Loss/Validation': val_loss,
    'Accuracy/Train': train_acc,
    'Accuracy/Validation': val_acc
}
for name, value in metrics.items():
    writer.add_scalar(name, value, step)
''',
    "environment_tracking": r'''
tracelet.start_logging(
    "reproducible_experiment",
    backend="mlflow",
    config={
        "track_git": True,      # Git commit and status
        "track_env": True,      # Python packages and versions
        "track_system": True,   # Hardware information
    }
)

# Log important hyperparameters
experiment = tracelet.get_active_experiment()
experiment.log_params({
    'model_architecture': 'ResNet50',
    'optimizer': 'AdamW',
    'learning_rate': 0.001,
    'batch_size': 32,
    'epochs': 100,
    'data_augmentation': True,
    'random_seed': 42
})
''',
    "random_seed": r'''
import random
import numpy as np
import torch

def set_seed(seed=42):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False

# Set seed before training
set_seed(42)

# Log the seed
experiment.log_params({'random_seed': 42})
''',
    "robust_setup": r'''
import tracelet
from contextlib import contextmanager

@contextmanager
def experiment_context(exp_name, project, backend, config=None):
    """Context manager for safe experiment handling"""
    try:
        experiment = tracelet.start_logging(exp_name, project, backend, config)
        yield experiment
    except Exception as e:
        print(f"Experiment setup failed: {e}")
        # Fallback to basic logging
        experiment = tracelet.start_logging(f"{exp_name}_fallback", project, "mlflow")
        yield experiment
    finally:
        tracelet.stop_logging()

# Usage
with experiment_context("my_experiment", "my_project", "wandb") as exp:
    # Your training code here
    pass
''',
    "graceful_degradation": r'''
def safe_log_metric(writer, name, value, step):
    """Safely log metrics with fallback"""
    try:
        writer.add_scalar(name, value, step)
    except Exception as e:
        print(f"Failed to log {name}: {e}")
        # Continue training even if logging fails

def safe_log_image(writer, name, image, step):
    """Safely log images with size limits"""
    try:
        # Limit image size to prevent memory issues
        if image.numel() > 1000000:  # 1M pixels
            image = F.interpolate(image, size=(512, 512))
        writer.add_image(name, image, step)
    except Exception as e:
        print(f"Failed to log image {name}: {e}")
''',
    "shared_config": r'''
# shared_config.py
TRACELET_CONFIG = {
    "project": "team_project_2024",
    "backend": "wandb",
    "config": {
        "track_git": True,
        "track_env": True,
        "track_system": True,
        "metrics_interval": 60.0,
    }
}

# In individual scripts
from shared_config import TRACELET_CONFIG

tracelet.start_logging(
    exp_name=f"member_{os.getenv('USER')}_experiment",
    **TRACELET_CONFIG
)
''',
    "experiment_handoffs": r'''
# Log experiment metadata
experiment.log_params({
    'researcher': 'alice@company.com',
    'experiment_purpose': 'hyperparameter_tuning',
    'baseline_experiment': 'exp_v1_baseline',
    'notes': 'Testing different learning rate schedules',
    'next_steps': 'Try cosine annealing scheduler'
})

# Log important files and configurations
experiment.log_artifact('config.yaml')
experiment.log_artifact('model_architecture.py')
''',
    "sensitive_data": r'''
# Don't log sensitive information
safe_config = config.copy()
safe_config.pop('api_key', None)
safe_config.pop('password', None)
experiment.log_params(safe_config)

# Use environment variables for credentials
import os
wandb_key = os.getenv('WANDB_API_KEY')
''',
    "data_filtering": r'''
def filter_sensitive_metrics(metrics_dict):
    """Remove sensitive information from metrics"""
    filtered = {}
    for key, value in metrics_dict.items():
        if 'password' not in key.lower() and 'secret' not in key.lower():
            filtered[key] = value
    return filtered

# Apply filtering before logging
safe_metrics = filter_sensitive_metrics(all_metrics)
for name, value in safe_metrics.items():
    writer.add_scalar(name, value, step)
''',
}


class ActiveWriter:
    """``writer`` for examples that start their own run: the active run's writer."""

    def __getattr__(self, name):
        return getattr(tracelet.get_active_experiment().writer, name)


def run_example(name: str, namespace: dict | None = None) -> dict:
    ns = {"tracelet": tracelet, "os": os, **(namespace or {})}
    exec(compile(EXAMPLES[name], f"<USER-GUIDE.md: {name}>", "exec"), ns)
    return ns


def test_examples_match_the_guide():
    guide = next((p for p in GUIDE_CANDIDATES if p.exists()), None)
    if guide is None:
        pytest.skip(f"USER-GUIDE.md not found at {[str(p) for p in GUIDE_CANDIDATES]}")
    blocks = [b.strip() for b in re.findall(r"```python\n(.*?)```", guide.read_text(), re.S)]
    assert blocks == [code.strip() for code in EXAMPLES.values()]


def test_naming_conventions(logdir):
    from datetime import datetime

    exp = tracelet.start_logging("naming", "image_classification")
    ns = run_example("naming", {"datetime": datetime, "writer": exp.writer, "ce_loss": 0.7,
                                "l2_loss": 0.01, "train_acc": 0.8, "val_acc": 0.75, "step": 0,
                                "loss": 0.71, "acc": 0.8})
    tracelet.stop_logging()
    assert ns["exp_name"] == "experiment_1"
    run = read_run(exp.run_dir)
    for tag in ("Loss/Train/CrossEntropy", "Loss/Train/L2Regularization", "Metrics/Accuracy/Train",
                "Metrics/Accuracy/Validation", "loss", "acc"):
        assert [s for s, _ in run.scalars[tag]] == [0], tag


def test_project_structure(logdir):
    run_example("project_structure")
    tracelet.stop_logging()
    dev, prod = (read_run(logdir / p) for p in ("sentiment_analysis_dev/model_v1_dev",
                                                  "sentiment_analysis_prod/model_v2_prod"))
    assert dev.manifest["backends"] == ["mlflow"] and dev.manifest["status"] == "finished"
    assert prod.manifest["backends"] == ["mlflow", "wandb"] and prod.manifest["status"] == "finished"


def test_logging_frequency_with_a_patched_torch_writer(logdir):
    from torch.utils.tensorboard import SummaryWriter

    exp = tracelet.start_logging("frequency", "guide", config={"track_env": False})
    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    scheduler = torch.optim.lr_scheduler.StepLR(torch.optim.SGD(model.parameters(), lr=0.1), 10)
    ns = {"writer": SummaryWriter(), "model": model, "scheduler": scheduler, "steps_per_epoch": 1000,
          "loss": 0.5, "val_acc": 0.9, "prediction_grid": torch.rand(3, 32, 32)}
    for step in (0, 1, 1000, 5000):
        ns.update(step=step, epoch=step // 1000)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch: "use get_last_lr()"
            run_example("logging_frequency", ns)
    ns["writer"].close()
    tracelet.stop_logging()
    run = read_run(exp.run_dir)
    assert [s for s, _ in run.scalars["Loss/Train"]] == [0, 1, 1000, 5000]
    assert [s for s, _ in run.scalars["Accuracy/Validation"]] == [0, 1, 5]
    assert sorted({h.tag for h in run.histograms}) == ["Parameters/0.bias", "Parameters/0.weight"]
    assert [h.step for h in run.histograms if h.tag == "Parameters/0.bias"] == [0, 1000, 5000]
    assert [(im.tag, im.step, im.width) for im in run.images] == [("Predictions", 0, 32), ("Predictions", 5000, 32)]


def test_backend_selection(logdir):
    for name in ("backend_dev", "backend_team", "backend_prod"):
        run_example(name)
    tracelet.stop_logging()
    backends = {p.name: read_run(p).manifest["backends"] for p in run_dirs(logdir)}
    assert backends == {"dev_experiment": ["mlflow"], "team_experiment": ["wandb"],
                        "prod_experiment": ["mlflow", "wandb"]}


def test_memory_management(logdir):
    import torch.nn.functional as F

    ns = run_example("memory_management", {"writer": ActiveWriter(), "F": F, "step": 100,
                                           "large_image": torch.rand(1, 3, 1024, 1024)})
    exp = tracelet.get_active_experiment()
    assert exp.config.max_image_size == 512 * 1024 and exp.config.metrics_interval == 30.0
    exp.log_image("Large", ns["large_image"], step=100)  # ~3 MB as PNG: downscaled to fit
    tracelet.stop_logging()
    run = read_run(exp.run_dir)
    images = {im.tag: im for im in run.images}
    assert (images["Sample"].width, images["Sample"].height, images["Sample"].step) == (224, 224, 100)
    assert len(images["Large"].encoded) <= 512 * 1024 < 3 * 1024 * 1024
    assert run.parts  # track_system: a final sample even though the 30 s interval never elapsed


def test_network_efficiency(logdir):
    exp = tracelet.start_logging("batched", config={"track_env": False})
    run_example("network_efficiency", {"writer": exp.writer, "train_loss": 0.4, "val_loss": 0.5,
                                       "train_acc": 0.9, "val_acc": 0.8, "step": 7})
    tracelet.stop_logging()
    scalars = read_run(exp.run_dir).scalars
    assert {k: v for k, v in scalars.items()} == {
        "Loss/Train": [(7, pytest.approx(0.4))], "Loss/Validation": [(7, 0.5)],
        "Accuracy/Train": [(7, pytest.approx(0.9))], "Accuracy/Validation": [(7, pytest.approx(0.8))]}


def git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_environment_tracking_in_a_git_repo(logdir, tmp_path):
    git("init", "-q", "-b", "main", cwd=tmp_path)
    git("config", "user.email", "t@example.com", cwd=tmp_path)
    git("config", "user.name", "t", cwd=tmp_path)
    git("remote", "add", "origin", "https://alice:ghp_SECRET@github.com/acme/train.git", cwd=tmp_path)
    (tmp_path / "train.py").write_text("lr = 0.1\n")
    git("add", "train.py", cwd=tmp_path)
    git("commit", "-q", "-m", "init", cwd=tmp_path)
    (tmp_path / "train.py").write_text("lr = 0.2\n")  # uncommitted change: dirty, diff saved
    ns = run_example("environment_tracking")
    exp = ns["experiment"]
    tracelet.stop_logging()
    run = read_run(exp.run_dir)
    g = run.manifest["git"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert g["is_repo"] and g["commit"] == head and g["branch"] == "main" and g["dirty"] is True
    assert g["remote"] == "https://github.com/acme/train.git"
    diff = (exp.run_dir / "artifacts" / "git_diff.patch").read_text()
    assert "-lr = 0.1" in diff and "+lr = 0.2" in diff
    assert "ghp_SECRET" not in (exp.run_dir / "tracelet.json").read_text()
    env = run.manifest["env"]
    assert env["python"] and env["platform"] and env["packages"]["torch"]
    assert run.manifest["params"]["model_architecture"] == "ResNet50"
    assert run.manifest["params"]["data_augmentation"] is True
    assert run.hparams[-1]["learning_rate"] == 0.001 and run.parts


def test_git_diff_is_capped_and_non_repo_is_reported(logdir, tmp_path):
    git("init", "-q", cwd=tmp_path)
    git("config", "user.email", "t@example.com", cwd=tmp_path)
    git("config", "user.name", "t", cwd=tmp_path)
    (tmp_path / "big.txt").write_text("a\n")
    git("add", "big.txt", cwd=tmp_path)
    git("commit", "-q", "-m", "init", cwd=tmp_path)
    (tmp_path / "big.txt").write_text("b" * 5000 + "\n")
    exp = tracelet.start_logging("capped", config={"track_env": False, "git_diff_max_bytes": 1000})
    tracelet.stop_logging()
    patch = (exp.run_dir / "artifacts" / "git_diff.patch").read_bytes()
    assert len(patch) <= 1000 and b"diff cut at 1000" in patch
    assert exp.manifest["git"]["diff_truncated"] is True and exp.manifest["git"]["remote"] is None
    os.chdir(tmp_path.parent)
    (tmp_path.parent / "not_a_repo").mkdir(exist_ok=True)
    os.chdir(tmp_path.parent / "not_a_repo")
    exp2 = tracelet.start_logging("norepo", config={"track_env": False, "logdir": str(logdir)})
    tracelet.stop_logging()
    assert exp2.manifest["git"] == {"is_repo": False}


def test_random_seed_management(logdir):
    experiment = tracelet.start_logging("seeded", config={"track_env": False})
    run_example("random_seed", {"experiment": experiment})
    tracelet.stop_logging()
    assert read_run(experiment.run_dir).manifest["params"] == {"random_seed": 42}


def test_robust_experiment_setup(logdir, capsys):
    run_example("robust_setup")
    assert tracelet.get_active_experiment() is None
    (run_dir,) = run_dirs(logdir)  # no fallback run: setup worked offline
    run = read_run(run_dir)
    assert run_dir == logdir / "my_project" / "my_experiment"
    assert run.manifest["status"] == "finished" and run.manifest["backends"] == ["wandb"]
    assert "setup failed" not in capsys.readouterr().out


def test_graceful_degradation(logdir, capsys):
    import torch.nn.functional as F

    exp = tracelet.start_logging("graceful", config={"track_env": False})
    ns = run_example("graceful_degradation", {"F": F})
    ns["safe_log_metric"](exp.writer, "ok", 1.0, 0)
    ns["safe_log_metric"](exp.writer, "bad", "not a number", 0)  # printed, not raised
    ns["safe_log_image"](exp.writer, "large", torch.rand(1, 3, 1100, 1000), 0)  # > 1M: resized
    ns["safe_log_image"](exp.writer, "small", torch.rand(3, 64, 48), 0)
    tracelet.stop_logging()
    assert "Failed to log bad" in capsys.readouterr().out
    run = read_run(exp.run_dir)
    assert run.scalars["ok"] == [(0, 1.0)] and "bad" not in run.scalars
    assert sorted((im.tag, im.width, im.height) for im in run.images) == [("large", 512, 512), ("small", 48, 64)]


def test_shared_config(logdir, tmp_path, monkeypatch):
    module_code, _, script = EXAMPLES["shared_config"].partition("# In individual scripts")
    (tmp_path / "shared_config.py").write_text(module_code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("USER", "alice")
    monkeypatch.delitem(sys.modules, "shared_config", raising=False)
    run_example("shared_config")
    exp = tracelet.get_active_experiment()
    tracelet.stop_logging()
    m = read_run(exp.run_dir).manifest
    assert exp.run_dir == logdir / "team_project_2024" / "member_alice_experiment"
    assert m["backends"] == ["wandb"] and exp.config.metrics_interval == 60.0 and m["git"]


def test_experiment_handoffs(logdir, tmp_path):
    (tmp_path / "config.yaml").write_text("lr: 0.001\n")
    (tmp_path / "model_architecture.py").write_text("class Net: ...\n")
    experiment = tracelet.start_logging("handoff", config={"track_env": False})
    run_example("experiment_handoffs", {"experiment": experiment})
    tracelet.stop_logging()
    run = read_run(experiment.run_dir)
    assert run.manifest["params"]["researcher"] == "alice@company.com"
    assert run.manifest["params"]["next_steps"] == "Try cosine annealing scheduler"
    art = experiment.run_dir / "artifacts"
    assert (art / "config.yaml").read_text() == "lr: 0.001\n"
    assert (art / "model_architecture.py").read_text() == "class Net: ...\n"


def test_sensitive_data_handling(logdir, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "wandb-key-value")
    experiment = tracelet.start_logging("secrets")
    config = {"lr": 0.1, "api_key": "k-123", "password": "pw", "db_password": "forgotten-one"}
    run_example("sensitive_data", {"experiment": experiment, "config": config})
    tracelet.stop_logging()
    params = read_run(experiment.run_dir).manifest["params"]
    assert params == {"lr": 0.1, "db_password": REDACTED}  # what the example missed, redaction caught
    raw = (experiment.run_dir / "tracelet.json").read_text()
    assert "forgotten-one" not in raw and "wandb-key-value" not in raw


def test_data_filtering(logdir):
    exp = tracelet.start_logging("filtered", config={"track_env": False})
    all_metrics = {"loss": 0.5, "password_attempts": 3, "secret_score": 1.0, "acc": 0.9}
    run_example("data_filtering", {"writer": exp.writer, "all_metrics": all_metrics, "step": 0})
    tracelet.stop_logging()
    assert sorted(read_run(exp.run_dir).scalars) == ["acc", "loss"]
