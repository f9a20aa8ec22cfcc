"""One real training run recorded in a git repository, for the reproducibility tests of each
destination: ``train.py`` (``tracelet.start_logging`` + torch's ``SummaryWriter``) committed in a
repo whose remote URL carries a credential, run with a dirty tracked file and a secret on its
command line. The tests read each field back with the vendor's own client."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SECRET = "hunter2secret"  # the remote URL's password: never on any destination
API_KEY = "sk-live-0123456789abcdef"  # on the command line and in params: redacted everywhere
TRAIN = '''
import sys
import tracelet
from torch.utils.tensorboard import SummaryWriter

lr = float(sys.argv[sys.argv.index("--lr") + 1])
exp = tracelet.start_logging("baseline", project="repro", backend=%r,
                             config={"track_system": False, "flush_interval": 0.1})
exp.log_params({"lr": lr, "batch_size": 32, "api_key": sys.argv[-1]})
w = SummaryWriter()  # no log dir: tracelet puts it in the run
for step in range(5):
    w.add_scalar("Loss/train", 1.0 / (step + 1), step)
w.close()
tracelet.stop_logging()
'''


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", "-C", str(repo), *args], env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


def record_in_repo(repo: Path, backend: str, drop_env: tuple[str, ...] = (), subdir: str = ""
                   ) -> tuple[Path, Path, Path, list[str]]:
    """(logdir, run dir, repo, argv) of ``python train.py --lr 0.1 --api-key <key>`` run in a
    fresh repo at ``repo`` (``drop_env``: variables the training must not see; ``subdir``: the
    folder of the repo that holds ``train.py`` and ``model.py`` and that the training runs in)."""
    work = repo / subdir if subdir else repo
    work.mkdir(parents=True, exist_ok=True)
    git(repo, "init", "-q", "-b", "main")
    (work / "train.py").write_text(TRAIN % backend)
    (work / "model.py").write_text("DEPTH = 50\n")
    git(repo, "add", *((work / f).relative_to(repo).as_posix() for f in ("train.py", "model.py")))
    git(repo, "commit", "-q", "-m", "baseline")
    git(repo, "remote", "add", "origin", f"https://user:{SECRET}@example.com/org/repo.git")
    (work / "model.py").write_text("DEPTH = 101\n")  # a dirty tracked file
    logdir = repo / "tracelet_runs"
    argv = [sys.executable, "train.py", "--lr", "0.1", "--api-key", API_KEY]
    env = {k: v for k, v in os.environ.items() if k not in drop_env}
    proc = subprocess.run(argv, cwd=work, env={**env, "TRACELET_LOGDIR": str(logdir)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = [p.parent for p in logdir.rglob("tracelet.json") if ".tracelet" not in p.parts]
    return logdir, run_dir, repo, argv
