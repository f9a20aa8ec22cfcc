"""The command line: adapters only. Each command parses options, calls one library function,
renders its result, and turns :class:`TraceletError` s into exit codes:

    0 all synced · 1 some run/destination failed (the rest synced) · 2 bad usage · 75 locked

``sync`` and ``status`` never print a Python traceback: each run is synced inside its own error
boundary (:meth:`tracelet.engine.SyncEngine.sync_run`), and anything that still escapes is one
``internal error`` line (exit 1). ``-v`` adds the tracebacks.
"""
from __future__ import annotations

import functools
import json
import sys
import traceback

import click

from .errors import LockedError, TraceletError, UsageError

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 75


def _output_options(f):
    """-v/-q, shared by sync and status; the command body runs inside :func:`_no_traceback`."""
    f = click.option("-q", "--quiet", is_flag=True,
                     help="Print only errors (and the report with --json).")(f)
    f = click.option("-v", "--verbose", is_flag=True,
                     help="Print the traceback of an unexpected error.")(f)
    return _no_traceback(f)


def _no_traceback(f):
    """The last error boundary: an unexpected exception is one line (exit 1), its traceback
    only with -v. Runs have their own boundaries inside the engine; this one is for the rest."""

    @functools.wraps(f)
    def wrapper(*args, **kw):
        try:
            return f(*args, **kw)
        except Exception as e:
            if isinstance(e, click.exceptions.ClickException):
                raise
            if kw.get("verbose"):
                traceback.print_exc()
            text = str(e).replace("\n", " ")[:400]
            click.echo(f"tracelet: internal error: {type(e).__name__}: {text}. The command "
                       "stopped there; run it again with -v for the traceback and report it.",
                       err=True)
            sys.exit(EXIT_PARTIAL)

    return wrapper


def _fail(e: TraceletError) -> "NoReturn":  # noqa: F821
    from .redact import scrub

    click.echo(f"tracelet: error: {scrub(str(e))}", err=True)
    if isinstance(e, LockedError):
        sys.exit(EXIT_LOCKED)
    if isinstance(e, UsageError):
        sys.exit(EXIT_USAGE)
    sys.exit(EXIT_PARTIAL)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tracelet")
def main() -> None:
    """Tracelet: replay TensorBoard logdirs into MLflow, W&B, ClearML and Aim, exactly once.

    \b
    Example:
      tracelet sync ./runs --to mlflow,wandb
    """


class DestinationCommand(click.Command):
    """``sync`` and ``status``: the options that pick and configure destinations come from the
    destination registry (built-ins and plugins' entry points), read only when this command is
    parsed or its help is shown, so ``tracelet export`` never scans for plugins."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not getattr(self, "_destination_params", None):
            self._destination_params = _destination_params()
            self.params[1:1] = self._destination_params  # after LOGDIRS
        return super().get_params(ctx)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from .destinations import all_factories
        from .destinations.registry import PLUGIN_PROBLEMS

        with formatter.section("Destinations"):
            formatter.write_dl([(f.name, f.summary or "") for f in all_factories()])
            for line in PLUGIN_PROBLEMS:
                formatter.write_text(line)
        super().format_epilog(ctx, formatter)


def _destination_params() -> list[click.Parameter]:
    from .destinations import all_factories, known_destinations

    params: list[click.Parameter] = [
        click.Option(["--to", "to"], default=None, metavar="DESTS",
                     help="Comma-separated destinations: " + ",".join(known_destinations())
                          + ". Default: the backends in each run's manifest."),
        click.Option(["--state-dir", "state_dir"], default=None, envvar="TRACELET_STATE_DIR",
                     help="Where checkpoints live (default LOGDIR/.tracelet; env "
                          "TRACELET_STATE_DIR). Use for read-only logdirs."),
        click.Option(["--project", "project"], default=None,
                     help="Project when a run has no manifest (default: the logdir's name)."),
    ]
    seen = {"to", "state_dir", "project"}
    spelled = {"--to", "--state-dir", "--project"}
    for factory in all_factories():
        for opt in factory.options:
            names = [f for f in (opt.flag, *opt.aliases) if f.split("/")[0] not in spelled]
            if opt.key in seen or not names or names[0] != opt.flag:
                continue  # a key or flag another destination declared first
            seen.add(opt.key)
            spelled.update(f.split("/")[0] for f in names)
            kind = click.Choice(list(opt.choices)) if opt.choices else None
            # "--x/--no-x" is a boolean pair by its spelling; a lone "--x" flag needs is_flag
            extra = {"is_flag": True, "flag_value": True} \
                if opt.is_flag and "/" not in opt.flag else {}
            params.append(click.Option([*names, opt.key], default=None, type=kind,
                                       help=opt.help, **extra))
    return params


def _dest_config(kw: dict) -> dict:
    """The destination options given (registry keys), taken out of a command's keywords."""
    from .destinations import all_factories

    keys = {o.key for f in all_factories() for o in f.options}
    return {k: kw.pop(k) for k in list(kw) if k in keys}


@main.command(cls=DestinationCommand)
@click.argument("logdirs", nargs=-1, required=True)
@click.option("--follow", is_flag=True, help="Keep syncing new data until SIGTERM/SIGINT.")
@click.option("--interval", default=30.0, show_default=True, type=float,
              help="Seconds between passes with --follow.")
@click.option("--shard", default=None, metavar="K/N",
              help="Sync only the K-th of N stable shares of the runs (K from 0).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Runs synced in parallel.")
@click.option("--dry-run", is_flag=True, help="Report what would be sent; send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON report.")
@click.option("--no-redact", is_flag=True,
              help="Send params and tags as written (default: secrets in them, i.e. names like "
                   "password/token/api_key, token-shaped values, URL passwords, are sent as "
                   "***REDACTED***). Credentials of target URIs are never shown either way.")
@click.option("--resync", is_flag=True,
              help="Ignore the checkpoints for this pass: each run is compared with what the "
                   "destination holds and everything missing is sent (dedupe: nothing lands "
                   "twice). For a destination that lost data; see also tracelet reset.")
@click.option("--follow-artifact-links", is_flag=True,
              help="Read artifacts, sidecar parts and the manifest through symlinks that lead "
                   "outside the run folder (default: skipped and reported).")
@click.option("--finish-idle", "finish_idle", default=None, metavar="DURATION",
              help="Mark a run without a manifest whose event files have not changed for "
                   "DURATION (24h, 90m, 3600s, 2d) finished on every destination, ended at its "
                   "last event's wall time (default: such runs stay running).")
@click.option("--run-name", "run_name", default=None, metavar="TEMPLATE",
              help="Run name shown on destinations, from {run_path}, {name} (the run folder's "
                   "name) and {project}. Default: the run path without a leading "
                   "'<project>/'. Identity (checkpoints, run ids) does not change.")
@_output_options
def sync(logdirs, follow, interval, shard, workers, dry_run, as_json, no_redact,
         follow_artifact_links, verbose, quiet, resync=False, finish_idle=None, run_name=None,
         to=None, state_dir=None, project=None, **kw):
    """Replay LOGDIR(s) into destinations, incrementally and exactly once.

    \b
    Examples:
      tracelet sync ./runs --to mlflow
      MLFLOW_TRACKING_URI=http://mlflow:5000 tracelet sync /scratch/runs --to mlflow,wandb --json
      tracelet sync /scratch/runs --to aim --shard 0/4 --workers 4
    """
    from ._stdout import stdout_reserved
    from .engine import (SyncOptions, parse_destinations, parse_duration, parse_run_name,
                         parse_shard, run_sync)
    from .output import Output

    # Vendor SDK chatter (MLflow's "View run" lines, W&B/ClearML and their subprocesses) goes to
    # stderr in every mode; stdout carries only the JSON report.
    with stdout_reserved() as write_stdout:
        try:
            options = SyncOptions(
                destinations=parse_destinations(to),
                state_dir=state_dir,
                project=project,
                dest_config=_dest_config(kw),
                shard=parse_shard(shard),
                workers=workers,
                dry_run=dry_run,
                follow=follow,
                interval_s=interval,
                json_output=as_json,
                redact_secrets=not no_redact,
                follow_artifact_links=follow_artifact_links,
                resync=resync,
                finish_idle_s=parse_duration(finish_idle),
                run_name=parse_run_name(run_name),
                verbose=verbose,
                quiet=quiet,
            )
            options.observer = Output(options)
            report = run_sync(list(logdirs), options)
        except TraceletError as e:
            _fail(e)
        if as_json:
            write_stdout(json.dumps(report.to_dict(), indent=1, sort_keys=True, default=str) + "\n")
    sys.exit(report.exit_code)


@main.command(cls=DestinationCommand)
@click.argument("logdirs", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--check", is_flag=True,
              help="Also ask each destination whether the run is still there (one lookup per "
                   "run; a deleted run is 'drifted'). Default: checkpoints and stat only.")
@_output_options
def status(logdirs, as_json, check, verbose, quiet, to=None, state_dir=None, project=None, **kw):
    """Show, per run and destination target, what is synced, behind, failed or drifted.

    The destination options (--mlflow-uri, --wandb-mode, ...) pick the target as sync does.
    Exit 1 when a row is failed, drifted or check failed.

    \b
    Examples:
      tracelet status ./runs --to mlflow
      tracelet status ./runs --to mlflow --mlflow-uri http://mlflow:5000 --check
    """
    from .engine import parse_destinations
    from .status import collect_status

    try:
        table = collect_status(list(logdirs), parse_destinations(to, allow_empty=True), state_dir,
                               verbose=verbose, dest_config=_dest_config(kw), project=project,
                               check=check)
    except TraceletError as e:
        _fail(e)
    if verbose:
        for tb in table.tracebacks:
            click.echo(tb, err=True, nl=False)
    if as_json:
        click.echo(json.dumps(table.to_dict(), indent=1, sort_keys=True, default=str))
    else:
        text = table.render(only_failed=quiet)
        if text:
            click.echo(text)
    sys.exit(table.exit_code)


@main.command(cls=DestinationCommand)
@click.argument("logdir")
@click.argument("runs", nargs=-1)
def reset(logdir, runs, to=None, state_dir=None, project=None, **kw):
    """Forget the checkpoints of RUNS (default: every run) of LOGDIR for --to DESTS.

    The next sync then finds each run on the destination and sends everything with dedupe:
    what is there stays once, what is missing (a run emptied or deleted there) lands again.

    \b
    Examples:
      tracelet reset ./runs --to mlflow
      tracelet reset ./runs torch/resnet --to mlflow,wandb
    """
    from .engine import SyncOptions, parse_destinations, reset_runs

    try:
        options = SyncOptions(destinations=parse_destinations(to), state_dir=state_dir,
                              project=project, dest_config=_dest_config(kw))
        report = reset_runs([logdir], list(runs), options)
    except TraceletError as e:
        _fail(e)
    for logdir, run, dest in report.forgotten:
        click.echo(f"tracelet: {run} -> {dest}: checkpoint forgotten; the next sync re-sends it "
                   "with dedupe", err=True)
    for name in report.unknown_runs:
        click.echo(f"tracelet: error: no run named '{name}' in {logdir}", err=True)
    for line in report.locked:
        click.echo(f"tracelet: {line}", err=True)
    if not report.forgotten and not report.unknown_runs and not report.locked:
        click.echo("tracelet: nothing to reset (no checkpoint for these runs and destinations)",
                   err=True)
    sys.exit(report.exit_code)


@main.command()
@click.argument("logdirs", nargs=-1, required=True)
@click.option("-o", "--output", required=True,
              help="Output file: .parquet or .csv (format from the extension); - writes CSV "
                   "to standard output (the summary goes to stderr).")
@click.option("--with-system", is_flag=True,
              help="Add each run's system metrics (sysmetrics/ sidecar) as kind=system rows: "
                   "tag = metric name, step = seconds since the run's start.")
@click.option("--no-redact", is_flag=True,
              help="Write hparams named like secrets as written (default: ***REDACTED***, "
                   "the rule of sync).")
def export(logdirs, output, with_system, no_redact):
    """Write every point of LOGDIR(s) as one tidy table: run, tag, kind, step, wall_time, value.

    With several LOGDIRs the run column starts with each logdir's name.

    \b
    Examples:
      tracelet export ./runs -o points.parquet
      tracelet export ./runs -o points.csv --with-system
      tracelet export ./runs_a ./runs_b -o - | head
    """
    from .export import STDOUT, export_logdir

    to_stdout = output == STDOUT
    try:
        summary = export_logdir(list(logdirs), output, redact=not no_redact,
                                with_system=with_system)
    except TraceletError as e:
        _fail(e)
    except BrokenPipeError:  # `-o - | head`: the reader has what it wanted
        _quiet_stdout()
        sys.exit(EXIT_OK)
    if to_stdout:
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _quiet_stdout()
            sys.exit(EXIT_OK)
    for line in summary.problems:
        click.echo(f"tracelet: warning: {line}", err=True)
    click.echo(summary.render(), err=to_stdout)  # stdout holds the table and nothing else


def _quiet_stdout() -> None:
    """stdout's reader went away: point fd 1 at /dev/null so the interpreter's final flush
    does not print an error."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


@main.command()
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def inspect(path, as_json):
    """Summarise the runs under PATH: tags by kind, points, steps, time range, problems.

    \b
    Example:
      tracelet inspect ./runs
    """
    from .inspect import inspect_path

    try:
        report = inspect_path(path)
    except TraceletError as e:
        _fail(e)
    click.echo(json.dumps(report.to_dict(), indent=1, sort_keys=True, default=str) if as_json
               else report.render())


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--logdir", default=None, help="Logdir (default TRACELET_LOGDIR or ./tracelet_runs).")
@click.option("--project", default=None, help="Project folder (default 'default').")
@click.option("--name", default=None, help="Run name (default: the command's name + time).")
@click.option("--metrics-interval", default=None, type=float,
              help="Seconds between system-metric samples (default 10).")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE",
              help="A tag for the manifest; repeatable.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def record(logdir, project, name, metrics_interval, tags, command):
    """Run COMMAND with system metrics and a manifest recorded beside its event files.

    The command sees TRACELET_RUN_DIR (write event files there). Exit status passes through.

    \b
    Example:
      tracelet record --project vision --name resnet50 -- python train.py --lr 0.1
    """
    from .recorder.record import run_recorded

    try:
        config: dict = {}
        if metrics_interval is not None:
            config["metrics_interval"] = metrics_interval
        if tags:
            bad = [t for t in tags if "=" not in t]
            if bad:
                raise UsageError(f"--tag {bad[0]!r}: expected KEY=VALUE")
            config["tags"] = dict(t.split("=", 1) for t in tags)
        code = run_recorded(list(command), logdir=logdir, project=project, name=name,
                            config=config or None)
    except TraceletError as e:
        _fail(e)
    sys.exit(code)


if __name__ == "__main__":
    main()
