"""No secret value leaves the machine, and `sync --json` stdout is pure JSON.

The one redaction rule (tracelet.redact) is checked where it applies: the rule itself, what the
recorder writes (manifest params/tags/command, its event-file hparams), `tracelet record`,
`tracelet export` (CSV and parquet), and every destination read back with its own client plus
a grep of the raw bytes of every file it (and the state dir) wrote. A credentialed MLflow URI
is synced against a real `mlflow server`, up and then stopped.

Every secret below is a unique string built at run time, checked to be IN the source first, so
a grep that finds nothing means something.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.destinations.harness_aim import AimLocalHarness
from tests.destinations.harness_clearml import ClearmlOfflineHarness
from tests.destinations.harness_mlflow import MlflowLocalHarness, MlflowServer
from tests.destinations.harness_wandb import WandbOfflineHarness
from tests.recorder.recorder_helpers import read_run
from tracelet.destinations import target_key
from tracelet.redact import DEFAULT_SECRET_PATTERNS, REDACTED, Redactor, scrub
from tracelet.testing.sources import SourceTruth, write_simple_run

HERE = Path(__file__).resolve().parent


def _shape(prefix: str, n: int, seed: str) -> str:
    """A token-shaped fake: the vendor prefix and a mixed-case/digit tail (never a real key)."""
    alphabet = "aB3dE5gH7jK9mN1pQ2rS4tU6vW8xY0z"
    tail = "".join(alphabet[(ord(c) * 7 + i * 5) % len(alphabet)] for i, c in
                   enumerate((seed * n)[:n]))
    return prefix + tail


S = {  # name -> secret value; each must never appear outside the source
    "list_pw": "lst-pw-7f1e", "list_url_pw": "urlpw-9c2d", "auth": "auth-v-31a",
    "auth_header": "authhdr-v-8b2", "pwd": "pwd-v-55c", "passphrase": "phrase-v-0d9",
    "ssh_key": "sshkey-v-1aa", "cookie": "cookie-v-c0c", "aws_id_named": "awsid-v-77e",
    "aws_secret": "awssec-v-4f4", "client_secret": "clisec-v-b1b", "json_pw": "jsonpw-v-e3e",
    "flag_tok": "flagtok-v-6a6", "repr_pw": "reprpw-v-2c2", "tag_named": "tagtok-v-9d9",
    "hp_pw": "hppw-v-3e3", "hp_json": "hpjson-v-5b5", "hp_flag": "hpflag-v-8c8",
    "openai": _shape("sk-proj-", 40, "openai"), "hf": _shape("hf_", 34, "hface"),
    "ghp": _shape("ghp_", 36, "github"), "gho": _shape("gho_", 36, "oauth"),
    "gh_pat": _shape("github_pat_", 40, "finegrained"),
    "akia": "AKIA" + "Q7W3E5R2T9Y4U6I8", "asia": "ASIA" + "Z2X4C6V8B1N3M5L7",
    "slack": "xoxb-" + "2718281828-3141592653-" + _shape("", 24, "slack"),
    "jwt": "eyJhbGciOiJIUzI1NiJ9." + "eyJzdWIiOiJ0cmFjZWxldC10ZXN0In0." + _shape("", 43, "sig"),
    "pem": "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC" + _shape("", 24, "pem"),
    "tag_value": _shape("hf_", 34, "tagvalue"), "hp_shape": _shape("ghp_", 36, "hparam"),
    "bearer": _shape("", 32, "bearer"),
}
PEM = f"-----BEGIN PRIVATE KEY-----\n{S['pem']}\n-----END PRIVATE KEY-----\n"
PARAMS = {
    "lr": 0.1,
    "model": {"depth": 50, "author": "alice"},
    "servers": [{"host": "db1", "password": S["list_pw"]}, f"postgres://svc:{S['list_url_pw']}@db2/x"],
    "auth": S["auth"], "auth_header": S["auth_header"], "pwd": S["pwd"],
    "passphrase": S["passphrase"], "ssh_key": S["ssh_key"], "cookie": S["cookie"],
    "aws_access_key_id": S["aws_id_named"], "aws_secret_access_key": S["aws_secret"],
    "client_secret": S["client_secret"],
    "db_json": json.dumps({"password": S["json_pw"], "port": 5432}),
    "launcher": f"python train.py --token={S['flag_tok']} --lr 0.1",
    "cfg_repr": f"Config(password='{S['repr_pw']}', lr=0.1)",
    "notes": [S["openai"], S["hf"], S["ghp"], S["gho"], S["gh_pat"], S["akia"], S["asia"],
              S["slack"], S["jwt"], PEM, f"Authorization: Bearer {S['bearer']}"],
}
TAGS = {"team": "vision", "token": S["tag_named"], "note": S["tag_value"]}
HPARAMS = {"lr": 0.1, "db_password": S["hp_pw"], "hp_json": json.dumps({"secret": S["hp_json"]}),
           "hp_cmd": f"--api-key={S['hp_flag']} --epochs 3", "hp_shape": S["hp_shape"]}
NAMED = ["auth", "auth_header", "pwd", "passphrase", "ssh_key", "cookie", "aws_access_key_id",
         "aws_secret_access_key", "client_secret"]


def leaks(data: bytes | str, secrets=None) -> list[str]:
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    return [k for k, v in (secrets or S).items() if v.encode() in data]


def files_leaking(root: Path, skip: tuple[Path, ...] = (), secrets=None) -> dict[str, list[str]]:
    out = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.is_symlink() or any(s in p.parents for s in skip):
            continue
        found = leaks(p.read_bytes(), secrets)
        if found:
            out[str(p.relative_to(root))] = found
    return out


def run_cli(*args, env=None, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "tracelet.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=cwd, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# the rule itself
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [
    "password", "DB_PASSWORD", "passwd", "pwd", "passphrase", "secret", "client_secret",
    "hf_token", "api_key", "apiKey", "wandb-api-key", "credentials", "private_key", "ssh_key",
    "sshKey", "cookie", "session_cookie", "auth", "auth_header", "AUTHORIZATION", "oauth",
    "authentication", "aws_access_key_id", "aws_secret_access_key", "tokenizer"])
def test_secret_names(name):
    assert Redactor().params({name: "v", "nested": {name: "v"}}) == {
        name: REDACTED, "nested": {name: REDACTED}}


@pytest.mark.parametrize("name", ["lr", "author", "authority", "authored_by", "keyboard",
                                  "passes", "compass", "seed", "batch_size"])
def test_ordinary_names_kept(name):
    assert Redactor().params({name: "v"}) == {name: "v"}


def test_names_at_any_depth_and_values_in_lists():
    r = Redactor()
    out = r.params({"servers": [{"host": "h", "password": "p1", "opts": [{"token": "t"}]},
                                "https://u:p2@host/x", "postgres://u:p3@db/x", 3]})
    assert out == {"servers": [{"host": "h", "password": REDACTED, "opts": [{"token": REDACTED}]},
                               "https://host/x", "postgres://u@db/x", 3]}


@pytest.mark.parametrize("key", [k for k in S if k not in ("list_pw", "list_url_pw")])
def test_value_rule_on_every_string_leaf(key):
    """The sources above, redacted: no secret survives, whatever the key it sits under."""
    clean = Redactor().params({"p": PARAMS, "t": TAGS, "h": HPARAMS})
    assert not leaks(json.dumps(clean), {key: S[key]})


def test_json_string_and_embedded_flags():
    r = Redactor()
    assert json.loads(r.text('{"password": "x", "port": 1}')) == {"password": REDACTED, "port": 1}
    assert r.text('[{"db": {"Secret": "x"}}, "ok"]') == json.dumps(
        [{"db": {"Secret": REDACTED}}, "ok"])
    assert r.text('{"lr": 0.1}') == '{"lr": 0.1}'  # nothing matched: the text as written
    assert r.text("run --token=abc --lr 0.1") == f"run --token={REDACTED} --lr 0.1"
    assert r.text("run --api-key abc -v") == f"run --api-key {REDACTED} -v"
    assert r.text("PASSWORD=abc python x.py") == f"PASSWORD={REDACTED} python x.py"
    assert r.text("https://h/x?access_token=abc&n=1") == f"https://h/x?access_token={REDACTED}&n=1"
    assert r.text("{'password': 'x', 'lr': 0.1}") == f"{{'password': '{REDACTED}', 'lr': 0.1}}"
    assert r.text("Host: h\nAuthorization: Basic dXM6cHc=\n") == f"Host: h\nAuthorization: {REDACTED}\n"


@pytest.mark.parametrize("ordinary", [
    "sk-learn", "sk-resnet-imagenet-finetune", "hf_hub", "hf_transfer", "ghp_short", "AKIA",
    "resnet-50", "deadbeef" * 5, "550e8400-e29b-41d4-a716-446655440000", "https://example.com/a?b=c",
    "ssh://git@host/x.git", "git@github.com:org/repo.git", "[64, 32]", "{not json}",
    "Bearer of bad news", "eyJ", "max_tokens", "postgres://db/x", "s3://bucket/key/part-0.parquet",
    "lr=0.1 batch=32", "The quick brown fox: jumps"])
def test_ordinary_values_kept(ordinary):
    assert Redactor().text(ordinary) == ordinary


def test_rule_is_idempotent_and_configurable():
    r = Redactor()
    once = r.params({"p": PARAMS, "t": TAGS})
    assert r.params(once) == once
    assert scrub(scrub("x http://u:p@h:1/a y")) == "x http://h:1/a y"
    # diagnostics keep the names Tracelet quotes in its messages; token shapes still go
    assert scrub(f"param 'token_count': new value '{S['ghp']}'") == \
        f"param 'token_count': new value '{REDACTED}'"
    plain = {"password": "p", "ssn": "123", "tokenizer": "bpe", "k": S["ghp"]}
    assert Redactor(secret_patterns=["ssn"]).params(plain) == {
        "password": REDACTED, "ssn": REDACTED, "tokenizer": REDACTED, "k": REDACTED}
    # a list replaces the names; token shapes still apply
    assert Redactor(["^password$"]).params(plain) == {
        "password": REDACTED, "ssn": "123", "tokenizer": "bpe", "k": REDACTED}
    assert Redactor(False).params(plain) == plain
    assert "auth(?!or(?!i[sz]))" in DEFAULT_SECRET_PATTERNS


def test_argv_rule():
    r = Redactor()
    argv = ["python", "train.py", "-p", "pw1", "--auth", "pw2", "--auth=pw3", "--password",
            "--lr", "0.1", "--header", f"Authorization: Bearer {S['bearer']}", S["ghp"],
            "https://u:pw4@host/x", "-p=pw5", "--no-token-here", "-v"]
    out = r.argv(argv)
    assert out[:10] == ["python", "train.py", "-p", REDACTED, "--auth", REDACTED,
                        f"--auth={REDACTED}", "--password", "--lr", "0.1"]
    assert out[10:] == ["--header", f"Authorization: Bearer {REDACTED}", REDACTED,
                        "https://host/x", f"-p={REDACTED}", "--no-token-here", REDACTED]
    assert Redactor(False).argv(argv) == argv


def test_target_key_ignores_credentials():
    assert target_key("mlflow", {"mlflow_uri": "http://u:pw@h:5000"}) == \
        target_key("mlflow", {"mlflow_uri": "http://h:5000"})


# ---------------------------------------------------------------------------------------------
# what the recorder writes
# ---------------------------------------------------------------------------------------------
def test_recorder_writes_no_secret(tmp_path, monkeypatch):
    import tracelet

    monkeypatch.chdir(tmp_path)
    cfg = {"track_env": False, "track_git": False, "flush_interval": 0.1,
           "logdir": str(tmp_path / "logs"), "tags": TAGS}
    with tracelet.start_logging("rec", "p", config=cfg) as exp:
        stored = exp.log_params(PARAMS)
        exp.writer.add_hparams(HPARAMS, {"hp/score": 1.0})
        exp.log_metric("loss", 0.5, 0)
    assert stored["servers"][0] == {"host": "db1", "password": REDACTED}
    assert stored["servers"][1] == "postgres://svc@db2/x"
    assert all(stored[k] == REDACTED for k in NAMED)
    assert stored["lr"] == 0.1 and stored["model/author"] == "alice"
    run = read_run(exp.run_dir)
    assert run.manifest["tags"] == {"team": "vision", "token": REDACTED, "note": REDACTED}
    assert run.manifest["params"]["db_password"] == REDACTED and run.hparams[-1]["lr"] == 0.1
    assert files_leaking(exp.run_dir) == {}


def test_run_writer_hparams_outside_an_experiment(tmp_path):
    """A RunWriter without its experiment writes hparams straight to its file: same rule."""
    from tracelet.recorder.writer import RunWriter

    w = RunWriter(tmp_path / "run")
    w.add_hparams(HPARAMS)
    w.close_file()
    hp = {k: S[k] for k in ("hp_pw", "hp_json", "hp_flag", "hp_shape")}
    assert files_leaking(tmp_path / "run", secrets=hp) == {}
    (f,) = (tmp_path / "run").glob("events.out.tfevents.*")
    from tracelet.reader import EventFileReader

    (got,) = [h.hparams for b in EventFileReader(f).batches() for h in b.hparams]
    assert got["db_password"] == REDACTED and got["lr"] == 0.1


def test_tracelet_record_hides_option_values_and_tags(tmp_path):
    res = run_cli("record", "--logdir", str(tmp_path / "logs"), "--project", "cli", "--name", "r",
                  "--tag", f"token={S['tag_named']}", "--tag", f"note={S['tag_value']}",
                  "--tag", "team=vision", "--",
                  sys.executable, "-c", "pass", "-p", S["pwd"], "--auth", S["auth"],
                  f"--auth={S['auth_header']}", f"--db-password={S['list_pw']}",
                  f"--dsn=postgres://u:{S['list_url_pw']}@db/x", S["openai"], "--lr", "0.1",
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    run = read_run(tmp_path / "logs" / "cli" / "r")
    assert run.manifest["command"][3:] == [
        "-p", REDACTED, "--auth", REDACTED, f"--auth={REDACTED}", f"--db-password={REDACTED}",
        "--dsn=postgres://u@db/x", REDACTED, "--lr", "0.1"]
    assert run.manifest["tags"] == {"token": REDACTED, "note": REDACTED, "team": "vision"}
    assert files_leaking(run.path) == {}
    assert not leaks(res.stdout + res.stderr)


# ---------------------------------------------------------------------------------------------
# a logdir whose sources hold every secret: a hand-written manifest and torch's add_hparams
# ---------------------------------------------------------------------------------------------
def build_secret_logdir(logdir: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    hand = logdir / "proj" / "hand"
    write_simple_run(hand, "proj/hand", SourceTruth(), ["loss"], [0, 1])
    (hand / "tracelet.json").write_text(json.dumps({
        "schema_version": 1, "run_id": "hand-secrets-1", "name": "hand", "project": "p",
        "status": "finished", "started_at": "2024-01-01T00:00:00+00:00",
        "ended_at": "2024-01-01T01:00:00+00:00", "params": PARAMS, "tags": TAGS}))
    with SummaryWriter(str(logdir / "torchrun")) as w:
        w.add_scalar("loss", 0.5, 0)
        w.add_hparams(HPARAMS, {"hp/score": 1.0})
    # the test can fail: every secret is in the source, in clear
    source = b"".join(p.read_bytes() for p in logdir.rglob("*") if p.is_file())
    assert set(leaks(source)) == set(S), set(S) - set(leaks(source))


def test_export_csv_and_parquet_redact_hparams(tmp_path):
    import pyarrow.parquet as pq

    logdir = tmp_path / "logs"
    build_secret_logdir(logdir)
    hp = {k: S[k] for k in ("hp_pw", "hp_json", "hp_flag", "hp_shape")}
    for name in ("points.csv", "points.parquet"):
        res = run_cli("export", str(logdir), "-o", str(tmp_path / name))
        assert res.returncode == 0, res.stderr
        table = pq.read_table(tmp_path / name) if name.endswith("parquet") else None
        if table is None:
            import pyarrow.csv as pacsv

            table = pacsv.read_csv(tmp_path / name)
        summaries = [s for s, k in zip(table.column("summary").to_pylist(),
                                       table.column("kind").to_pylist()) if k == "hparams"]
        shown = json.loads(summaries[0])
        assert shown["db_password"] == REDACTED and shown["lr"] == 0.1
        assert json.loads(shown["hp_json"]) == {"secret": REDACTED}
        assert not leaks(json.dumps(table.to_pylist()), hp)
        assert not leaks((tmp_path / name).read_bytes(), hp)
    res = run_cli("export", str(logdir), "-o", str(tmp_path / "raw.csv"), "--no-redact")
    assert res.returncode == 0 and leaks((tmp_path / "raw.csv").read_bytes(), hp)


# ---------------------------------------------------------------------------------------------
# every destination, read back with its own client; raw bytes of all it wrote and the state dir
# ---------------------------------------------------------------------------------------------
DEST_HARNESSES = [MlflowLocalHarness, WandbOfflineHarness, AimLocalHarness, ClearmlOfflineHarness]


@pytest.mark.parametrize("harness_cls", DEST_HARNESSES, ids=[h.label for h in DEST_HARNESSES])
def test_no_secret_reaches_a_destination(tmp_path, monkeypatch, harness_cls):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns: keep it in tmp
    h = harness_cls()
    h.setup(tmp_path, monkeypatch)
    logdir = tmp_path / "logs"
    build_secret_logdir(logdir)
    project = "psecrets"
    res = run_cli("sync", str(logdir), "--to", h.name, "--project", project, "--json",
                  *h.cli_args(), env=h.env(), cwd=tmp_path)
    report = json.loads(res.stdout)  # item 7: stdout is the report and nothing else
    assert report["exit_code"] == 0, (report, res.stderr)
    hand = h.read_back("p", "proj/hand")
    torch_run = h.read_back(project, "torchrun")
    assert hand.runs_found == 1 and torch_run.runs_found == 1
    for key in NAMED:
        assert hand.params[key] == REDACTED, (key, hand.params)
    assert hand.params["lr"] == "0.1" and hand.params["model/author"] == "alice"
    assert torch_run.params["db_password"] == REDACTED and torch_run.params["lr"] == "0.1"
    assert not leaks(json.dumps(hand.params)) and not leaks(json.dumps(torch_run.params))
    assert not leaks(res.stdout + res.stderr)
    sources = (logdir / "proj", logdir / "torchrun")  # the only files that may hold them
    assert files_leaking(tmp_path, skip=sources) == {}
    assert (logdir / ".tracelet" / "checkpoints").is_dir()  # the state dir was grepped too


def test_no_redact_sends_secrets_as_written(tmp_path, monkeypatch):
    """The control: the grep above finds secrets when they are sent."""
    monkeypatch.chdir(tmp_path)
    h = MlflowLocalHarness()
    h.setup(tmp_path, monkeypatch)
    logdir = tmp_path / "logs"
    build_secret_logdir(logdir)
    res = run_cli("sync", str(logdir), "--to", "mlflow", "--json", "--no-redact", env=h.env(),
                  cwd=tmp_path)
    assert json.loads(res.stdout)["exit_code"] == 0, res.stderr
    assert h.read_back("p", "proj/hand").params["auth"] == S["auth"]
    leaked = files_leaking(tmp_path, skip=(logdir / "proj", logdir / "torchrun"))
    assert {"auth", "hp_pw", "openai"} <= {k for v in leaked.values() for k in v}


# ---------------------------------------------------------------------------------------------
# a credentialed target URI: a real `mlflow server`, up and then stopped
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.server
def test_credentialed_mlflow_uri_never_shown(tmp_path, monkeypatch):
    """MLflow sends user:secretpw as basic auth (the server, without auth, ignores it). The
    password must appear in no output, report, log line, state file or vendor file; and
    `--json` stdout must parse although MLflow prints "View run" lines against a server."""
    monkeypatch.chdir(tmp_path)
    server = MlflowServer(tmp_path / "server").start()
    try:
        uri = f"http://user:secretpw@127.0.0.1:{server.port}"
        others = [WandbOfflineHarness(), ClearmlOfflineHarness(), AimLocalHarness()]
        env, args = {"TRACELET_RETRY_ATTEMPTS": "2"}, []
        for h in others:
            h.setup(tmp_path, monkeypatch)
            env.update(h.env())
            args += h.cli_args()
        logdir = tmp_path / "logs"
        hand = logdir / "proj" / "hand"
        write_simple_run(hand, "proj/hand", SourceTruth(), ["loss"], [0, 1])
        (hand / "tracelet.json").write_text(json.dumps({
            "schema_version": 1, "run_id": "cred-1", "name": "hand", "project": "pcred",
            "status": "finished", "ended_at": "2024-01-01T01:00:00+00:00", "params": {"lr": 0.1}}))
        secret = {"pw": "secretpw"}
        outputs = []

        res = run_cli("sync", str(logdir), "--to", "mlflow,wandb,clearml,aim", "--json",
                      "--mlflow-uri", uri, *args, env=env, cwd=tmp_path)
        report = json.loads(res.stdout)  # MLflow's "🏃 View run" lines would break this
        assert report["exit_code"] == 0, (report, res.stderr)
        assert report["runs"][0]["destinations"]["mlflow"]["target"] == \
            f"http://127.0.0.1:{server.port}"
        outputs += [res.stdout, res.stderr]
        from mlflow import MlflowClient

        c = MlflowClient(tracking_uri=server.uri)  # it did reach the server
        (run,) = c.search_runs([c.get_experiment_by_name("pcred").experiment_id])
        assert run.info.status == "FINISHED"

        for status_args in ([], ["--json"]):
            res = run_cli("status", str(logdir), "--to", "mlflow", "--mlflow-uri", uri,
                          *status_args, env=env)
            assert "up to date" in res.stdout, res.stdout  # the target the options name
            outputs += [res.stdout, res.stderr]

        # the server goes away; new points make the next sync fail on it (the error path)
        server.stop()
        write_simple_run(hand, "proj/hand", SourceTruth(), ["loss"], [2, 3], append=True)
        res = run_cli("sync", str(logdir), "--to", "mlflow", "--json", "--mlflow-uri", uri,
                      env=env, cwd=tmp_path)
        report = json.loads(res.stdout)
        err = report["runs"][0]["destinations"]["mlflow"]["error"]
        assert report["exit_code"] == 1 and f"127.0.0.1:{server.port}" in err, report
        outputs += [res.stdout, res.stderr]
        res = run_cli("sync", str(logdir), "--to", "mlflow", "--mlflow-uri", uri, env=env,
                      cwd=tmp_path)  # log lines (no --json): the failure is printed
        assert res.returncode == 1 and f"127.0.0.1:{server.port}" in res.stderr, res.stderr
        outputs += [res.stdout, res.stderr]
        res = run_cli("status", str(logdir), "--to", "mlflow", "--mlflow-uri", uri, "--json",
                      env=env)
        assert res.returncode == 1, res.stdout  # a failed row
        (row,) = json.loads(res.stdout)["runs"]
        assert row["target"] == f"http://127.0.0.1:{server.port}", row  # no credentials
        assert row["state"] == "failed" and f"127.0.0.1:{server.port}" in row["last_error"]
        outputs += [res.stdout, res.stderr]

        assert not leaks("\n".join(outputs), secret)
        ckpts = list((logdir / ".tracelet").rglob("*.json"))
        assert any(json.loads(p.read_text()).get("last_error") for p in ckpts)
        assert files_leaking(tmp_path, skip=(tmp_path / "server",), secrets=secret) == {}
    finally:
        server.stop()


def test_log_lines_are_scrubbed(caplog):
    from tracelet.redact import scrubbed_logger

    log = scrubbed_logger("tracelet.sync")
    with caplog.at_level("INFO", logger="tracelet.sync"):
        log.warning("failed: %s", "API request to http://user:secretpw@h:5000/api failed")
        try:
            raise RuntimeError("connect to http://user:secretpw@h:5000 refused")
        except RuntimeError:
            log.warning("with traceback", exc_info=True)
    text = caplog.text
    assert "http://h:5000/api" in text and "refused" in text and "secretpw" not in text


# ---------------------------------------------------------------------------------------------
# stdout is ours: vendor chatter from Python, fd 1, threads and subprocesses goes to stderr
# ---------------------------------------------------------------------------------------------
def test_stdout_reserved_diverts_every_writer(tmp_path):
    script = textwrap.dedent("""
        import os, subprocess, sys, threading
        from tracelet._stdout import stdout_reserved
        with stdout_reserved() as write:
            print("py-print")
            sys.__stdout__.write("dunder-stdout\\n"); sys.__stdout__.flush()
            os.write(1, b"raw-fd1\\n")
            t = threading.Thread(target=lambda: print("thread-print", flush=True)); t.start(); t.join()
            subprocess.run(["sh", "-c", "echo child-process"], check=True)
            write('{"report": 1}\\n')
        print("after")
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == '{"report": 1}\nafter\n'
    for line in ("py-print", "dunder-stdout", "raw-fd1", "thread-print", "child-process"):
        assert line in res.stderr, (line, res.stderr)
