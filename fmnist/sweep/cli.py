"""fmnist-sweep: a hyperparameter search (Optuna) in which every trial is a DVC experiment.

    fmnist-sweep --trials 16                          # the space of sweep.yaml, one trial at a time
    fmnist-sweep --trials 16 --jobs 2 -S train.epochs=3   # two at a time; every trial trains 3 epochs
    fmnist-sweep --trials 20                          # the same study again: 4 more trials
    fmnist-sweep --storage postgresql://me@db/sweeps --trials 40   # one study, workers on many machines
    optuna-dashboard sqlite:///.dvc/tmp/sweep/optuna.db            # watch it live

Run it in the repository (any folder of it). Each trial is `dvc exp run -n STUDY-N -S ...`
in a copy of the repository at the study's commit (fmnist/sweep/trial_workspace.py), with its
share of the cores; the study (fmnist/sweep/study.py) maximises validation accuracy
(metrics/train.json: best_val_acc) and stops trials that are clearly behind after an
epoch. The result: the best trials as a table, the command that applies the best one,
pictures and logs in reports/sweep/STUDY/. docs/sweep.md has the whole story.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from fmnist.core.errors import DataError, ParamError, PipelineError, Terminated, flat, run
from fmnist.core.io import write_text
from fmnist.params import value_of
from fmnist.serve.provenance import git, git_commit
from fmnist.sweep.results import pictures, summary
from fmnist.sweep.search_space import (
    SPACE_FILE,
    check_params,
    inside,
    load_space,
    override_value,
    overrides,
    parse_fixed,
    with_fixed,
)
from fmnist.sweep.study import (
    DEFAULTS,
    EXPERIMENT,
    FAILURE,
    INTERRUPTED,
    LOG,
    RERUN_OF,
    WORKER,
    StudyLock,
    Worker,
    default_storage_url,
    fail_lost_trials,
    heartbeats,
    open_storage,
    open_study,
    plan_trials,
    rerun_attrs,
    shown_url,
    storage_url,
)
from fmnist.sweep.trial_workspace import Workspace, dvc_command, last_error, push_experiment, run_quiet

FAILURES_IN_A_ROW = 3  # then the pipeline, not the params, is the likely cause: the sweep stops
STOP_GRACE_SECONDS = 60  # after Ctrl-C, how long a trial gets to end before it is killed
OBJECTIVE = "best_val_acc"  # of the train stage's summary (dvc.yaml: vars.train_summary)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,40}")  # a study name, and so part of a git ref


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fmnist-sweep", description="Search hyperparameters with Optuna; every trial is a DVC experiment.",
        epilog="exit codes: 0 done, 1 an error (one line says what), 130 Ctrl-C, 143 SIGTERM; "
               "the study stays consistent and the same command continues it. Docs: docs/sweep.md")
    parser.add_argument("--trials", type=int, default=20, metavar="N",
                        help="trials the study should have in all (default 20); a study that has them runs none")
    parser.add_argument("--jobs", type=int, default=1, metavar="J",
                        help="trials at once on this machine, each in its own copy of the repository, "
                             "with its share of the cores (default 1)")
    parser.add_argument("-S", "--set-param", dest="fixed", action="append", default=[], metavar="KEY=VALUE",
                        help="fix a param for every trial, as `dvc exp run -S` does (e.g. -S train.epochs=1)")
    parser.add_argument("--study", default="sweep", help="the study's name (default sweep); its experiments "
                                                          "are named STUDY-0, STUDY-1, ...")
    parser.add_argument("--storage", metavar="URL", help="Optuna storage: sqlite:///PATH (default "
                        "sqlite:///.dvc/tmp/sweep/optuna.db) or postgresql://USER@HOST/DB to share the study "
                        "between machines")
    parser.add_argument("--space", type=Path, metavar="FILE", help="the search space (default: sweep.yaml)")
    push = parser.add_mutually_exclusive_group()
    push.add_argument("--push", metavar="GIT_REMOTE", help="push each experiment to this git remote and the "
                      "default DVC remote (default: origin with a PostgreSQL storage, none with SQLite)")
    push.add_argument("--no-push", action="store_true", help="push nothing, whatever the storage")
    parser.add_argument("--top", type=int, default=10, metavar="K", help="trials in the final table (default 10)")
    args = parser.parse_args(argv)
    if args.trials < 0:
        parser.error(f"--trials: got {args.trials}, expected 0 or more")
    if args.jobs < 1:
        parser.error(f"--jobs: got {args.jobs}, expected 1 or more")
    if args.top < 1:
        parser.error(f"--top: got {args.top}, expected 1 or more")
    if not NAME.fullmatch(args.study):
        parser.error(f"--study: got {args.study!r}, expected letters, digits, - and _ (at most 41), "
                     f"as its experiments' names are made of it")
    return args


def repo_root() -> Path:
    try:
        root = Path(git("rev-parse", "--show-toplevel"))
    except DataError:
        raise PipelineError("fmnist-sweep: run it inside the project's git repository "
                            "(no git repository here)") from None
    if not (root / "dvc.yaml").is_file():
        raise PipelineError(f"{root}: no dvc.yaml; run fmnist-sweep in the project's repository")
    return root


def params_at(root: Path, commit: str) -> dict:
    """params.yaml as the trials get it: the study's commit's, checked."""
    text = git("show", f"{commit}:params.yaml", cwd=root)
    if len(text) > 1_000_000:
        raise ParamError(f"params.yaml at {commit[:12]}: larger than 1 MB; it is a few dozen lines")
    try:
        params = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParamError(f"params.yaml at {commit[:12]}: not valid YAML: {flat(exc, 160)}") from None
    errors = check_params(params)
    if errors:
        raise ParamError(f"params.yaml at {commit[:12]}: {errors[0]}")
    return params


def cores() -> int:
    """The cores the sweep may use: OMP_NUM_THREADS when set (a share given to it), else this process's CPUs."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class Sweep:
    """What the trials of one fmnist-sweep process share."""

    def __init__(self, args, root, storage, url, study, lock, config, shared, fixed, base, workspaces, env, push):
        self.args, self.root, self.storage, self.url, self.study, self.lock = args, root, storage, url, study, lock
        self.config, self.shared, self.fixed, self.base, self.env, self.push = config, shared, fixed, base, env, push
        self.workspaces = workspaces
        self.baseline = shared["baseline"]
        self.out = root / "reports" / "sweep" / args.study
        self.stopping = threading.Event()
        self._print, self._push = threading.Lock(), threading.Lock()
        self.me = Worker.me()

    def say(self, line: str) -> None:
        with self._print:
            print(line, flush=True)

    def experiment(self, number: int) -> str:
        return f"{self.args.study}-{number}"

    def shown_path(self, path: Path) -> str:
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)


class TrialRun(threading.Thread):
    """One trial from start to `tell`: its experiment, watched for pruning, published."""

    def __init__(self, sweep: Sweep, trial, ws):
        super().__init__(name=f"trial-{trial.number}", daemon=True)
        self.sweep, self.trial, self.ws = sweep, trial, ws
        self.outcome = "failed"  # complete, pruned, failed (of its own accord), interrupted

    def run(self) -> None:
        try:
            with heartbeats(self.sweep.storage, self.trial._trial_id):
                self._run()
        except Exception as exc:  # noqa: BLE001 - storage or git trouble: this trial fails, the sweep goes on
            reason = f"{type(exc).__name__ if not isinstance(exc, PipelineError) else 'error'}: " \
                     f"{flat(exc, 300)}"
            self.sweep.say(f"trial {self.trial.number} ({self.sweep.experiment(self.trial.number)}): failed: {reason}")
            self.outcome = "failed"
            try:
                self.trial.set_user_attr(FAILURE, reason)
                self.sweep.study.tell(self.trial, state=TrialState.FAIL)
            except Exception:  # noqa: BLE001, S110 - the storage itself is gone; the next sweep cleans up
                pass
        finally:
            self.ws.finished()

    def _run(self) -> None:
        sweep, trial, number = self.sweep, self.trial, self.trial.number
        name = sweep.experiment(number)
        params = {**trial.params, **sweep.fixed}
        epochs = with_fixed(sweep.base, params)["train"]["epochs"]
        log = sweep.out / "logs" / f"{name}.log"
        run_ = self.ws.start(name, overrides(params), sweep.env, log, sweep.baseline)
        started, seen, pruned_at, signalled = time.monotonic(), 0, None, None
        while True:
            code = run_.poll()
            accs = run_.epochs()
            for epoch in range(seen + 1, len(accs) + 1):
                trial.report(accs[epoch - 1], epoch)
                if pruned_at is None and code is None and epoch < epochs and trial.should_prune():
                    run_.stop_early()
                    pruned_at = epoch
                    sweep.say(f"trial {number} ({name}): pruned: validation accuracy {accs[epoch - 1]:.4f} after "
                              f"epoch {epoch} is behind the other trials'; it stops after its last whole epoch")
            seen = len(accs)
            if code is not None:
                break
            now = time.monotonic()
            if sweep.stopping.is_set():
                if signalled is None:
                    run_.signal(signal.SIGINT)  # as Ctrl-C in a terminal: the stage ends in one line
                    signalled = now
                elif now - signalled > STOP_GRACE_SECONDS:
                    run_.signal(signal.SIGKILL)
            time.sleep(0.25)  # an epoch line is acted on within a fraction of a second
        seconds = time.monotonic() - started
        trial.set_user_attr("seconds", round(seconds, 1))
        if code != 0 and sweep.stopping.is_set():
            trial.set_user_attr(INTERRUPTED, "the sweep was stopped (Ctrl-C or SIGTERM) in the middle of it")
            sweep.study.tell(trial, state=TrialState.FAIL)
            self.outcome = "interrupted"
            return
        if code != 0:
            reason = last_error(log)
            trial.set_user_attr(FAILURE, reason)
            sweep.study.tell(trial, state=TrialState.FAIL)
            sweep.say(f"trial {number} ({name}): failed after {seconds:.0f} s: {reason} "
                      f"(log: {sweep.shown_path(log)})")
            self.outcome = "failed"
            return
        summary, scores = self.ws.results()
        value = summary.get(OBJECTIVE)
        if not isinstance(value, (int, float)):
            raise PipelineError(f"{self.ws.paths['train_summary']}: no {OBJECTIVE} in the trial's summary")
        for key, attr in ((OBJECTIVE, "best_val_acc"), ("epoch", "epochs"), ("best_epoch", "best_epoch")):
            if key in summary:
                trial.set_user_attr(attr, summary[key])
        if isinstance(scores.get("test_acc"), (int, float)):
            trial.set_user_attr("test_acc", float(scores["test_acc"]))
        self.ws.publish(name, sweep.env)
        if sweep.push:
            try:
                with sweep._push:  # one dvc command at a time in the repository
                    push_experiment(sweep.root, sweep.push, name, sweep.env)
                trial.set_user_attr("pushed", sweep.push)
            except PipelineError as exc:
                trial.set_user_attr("push_failed", str(exc))
                sweep.say(f"trial {number} ({name}): warning: {exc}; push it later with "
                          f"`dvc exp push {sweep.push} {name}`")
        test = scores.get("test_acc")
        tested = f", test acc {test:.4f}" if isinstance(test, (int, float)) else ""
        if pruned_at is not None:
            trial.set_user_attr("pruned_after_epoch", pruned_at)
            sweep.study.tell(trial, state=TrialState.PRUNED)
            self.outcome = "pruned"
            sweep.say(f"trial {number} ({name}): pruned after epoch {pruned_at}; trained {summary.get('epoch')} "
                      f"epoch(s), val acc {value:.4f}{tested}, {seconds:.0f} s")
        else:
            sweep.study.tell(trial, float(value))
            self.outcome = "complete"
            sweep.say(f"trial {number} ({name}): val acc {value:.4f}{tested}, {summary.get('epoch')} epoch(s), "
                      f"{seconds:.0f} s")


def start_trials(sweep: Sweep, free: list) -> list[TrialRun]:
    """Under the study's lock: as many trials as free workspaces and the study's N allow,
    re-runs of interrupted trials first."""
    started = []
    with sweep.lock.held():
        trials = sweep.study.get_trials(deepcopy=False)
        plan = plan_trials(trials)
        new_room = sweep.args.trials - plan.counted
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        for ws in free:
            if plan.reruns and new_room > 0:
                old = plan.reruns.pop(0)
                sweep.study.enqueue_trial(old.params, user_attrs=rerun_attrs(old))
                new_room, waiting = new_room - 1, waiting + 1
            if waiting > 0:
                waiting -= 1
            elif new_room > 0:
                new_room -= 1
            else:
                break
            trial = sweep.study.ask(sweep.config.distributions)
            name = sweep.experiment(trial.number)
            trial.set_user_attr(WORKER, sweep.me.as_dict())
            trial.set_user_attr(EXPERIMENT, name)
            trial.set_user_attr(LOG, f"{sweep.me.host}:{sweep.shown_path(sweep.out / 'logs' / f'{name}.log')}")
            started.append(TrialRun(sweep, trial, ws))
    for t in started:
        params = " ".join(f"{k}={override_value(v)}" for k, v in t.trial.params.items())
        note = ""
        if t.trial.user_attrs.get(RERUN_OF) is not None:
            note = f", re-running interrupted trial {t.trial.user_attrs[RERUN_OF]}"
        elif t.trial.user_attrs.get("defaults"):
            note = ", the defaults"
        sweep.say(f"trial {t.trial.number} ({sweep.experiment(t.trial.number)}{note}) in {t.ws.shown()}: {params}")
        t.start()
    return started


def remaining(sweep: Sweep) -> tuple[int, int]:
    """(trials still to start, trials running elsewhere) as the storage says now."""
    trials = sweep.study.get_trials(deepcopy=False)
    plan = plan_trials(trials)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    to_start = max(0, sweep.args.trials - plan.counted) + waiting  # interrupted trials don't count: re-runs
    elsewhere = sum(1 for t in plan.running if t.user_attrs.get(WORKER, {}).get("pid") != sweep.me.pid
                    or t.user_attrs.get(WORKER, {}).get("host") != sweep.me.host)
    return to_start, elsewhere


def run_trials(sweep: Sweep) -> int:
    """Start trials in free workspaces until the study has N; wait for all to end. Exit code."""
    running: dict[int, TrialRun] = {}
    in_a_row, last_failed, checked, told_waiting, asked = 0, None, 0.0, False, 0.0
    while True:
        for index, t in list(running.items()):
            if not t.is_alive():
                del running[index]
                asked = 0.0  # a workspace is free: look for a trial to start now
                if t.outcome == "failed":
                    in_a_row, last_failed = in_a_row + 1, t
                elif t.outcome in ("complete", "pruned"):
                    in_a_row = 0
        if in_a_row >= FAILURES_IN_A_ROW:
            for t in running.values():
                t.join()
            failed_log = sweep.out / "logs" / (sweep.experiment(last_failed.trial.number) + ".log")
            raise PipelineError(f"{in_a_row} trials in a row failed (the last, trial {last_failed.trial.number}: "
                                f"{last_failed.trial.user_attrs.get('failure', 'see its log')}); that looks like "
                                f"the pipeline's trouble, not the params': stopping. Its log: "
                                f"{sweep.shown_path(failed_log)}")
        now = time.monotonic()
        if now - checked > 10:
            for number in fail_lost_trials(sweep.study, sweep.storage, sweep.me):
                sweep.say(f"trial {number}: its sweep was killed in the middle of it; it will be run again")
            checked = now
        free = [ws for ws in sweep.workspaces if ws.index not in running]
        if free and now - asked > 5:  # the lock and a look at every trial: not twice a second
            for t in start_trials(sweep, free):
                running[t.ws.index] = t
            asked = now
        if not running:
            to_start, elsewhere = remaining(sweep)
            if not to_start and not elsewhere:
                return 0
            if elsewhere and not to_start and not told_waiting:
                sweep.say(f"waiting for {elsewhere} trial(s) running elsewhere (re-run here if their worker is lost)")
                told_waiting = True
            time.sleep(2)
            checked = min(checked, time.monotonic() - 8)  # look for lost trials soon
            continue
        time.sleep(0.5)


def stop_trials(sweep: Sweep, reason: str) -> str:
    """Ctrl-C or SIGTERM: every running trial is stopped and recorded as interrupted (the
    same command re-runs it); no new one starts. The line to print."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not break the clean-up
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sweep.stopping.set()
    threads = [t for t in threading.enumerate() if isinstance(t, TrialRun)]
    for t in threads:
        t.join(STOP_GRACE_SECONDS + 30)
    stopped = [t.trial.number for t in threads if t.outcome == "interrupted"]
    return (f"{reason}: " + (f"stopped trial(s) {', '.join(map(str, stopped))}; " if stopped else "")
            + f"study '{sweep.args.study}' is consistent: the same command continues it"
            + (" and runs them again" if stopped else ""))


def finish(sweep: Sweep) -> None:
    """The table, the best trial and how to apply it, pictures and reports/sweep/STUDY/summary.md."""
    trials = sweep.study.get_trials(deepcopy=False)
    names = list(sweep.config.distributions)
    lines = summary(trials, names, sweep.args.top)
    written, skipped = pictures(sweep.study, sweep.out)
    sweep.say("\n".join(["", *lines]))
    if written:
        sweep.say("pictures: " + ", ".join(sweep.shown_path(p) for p in written))
    for note in skipped:
        sweep.say(f"no picture {note}")
    md = [f"# Sweep `{sweep.args.study}`", "",
          (f"Commit `{sweep.baseline[:12]}`; objective: validation accuracy (`{OBJECTIVE}`); "
           f"fixed: {', '.join(f'`{k}={v}`' for k, v in sweep.fixed.items()) or 'nothing'}."), "",
          *summary(trials, names, sweep.args.top, markdown=True), "",
          *[f"![{p.stem}]({p.name})" for p in written]]
    write_text(sweep.out / "summary.md", "\n".join(md) + "\n")
    sweep.say(f"summary: {sweep.shown_path(sweep.out / 'summary.md')}; "
              f"experiments: dvc exp show --rev {sweep.baseline[:12]}")


def existing_names(root: Path, baseline: str, study: str) -> list[str]:
    refs = git("for-each-ref", "--format=%(refname)", f"refs/exps/{baseline[:2]}/{baseline[2:]}/", cwd=root)
    names = [ref.rsplit("/", 1)[-1] for ref in refs.split()]
    return [n for n in names if re.fullmatch(re.escape(study) + r"-\d+", n)]


def cli(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", module="optuna")  # experimental-feature notes, heartbeat notes
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = repo_root()
    given = args.storage or default_storage_url(root)
    if given.startswith("sqlite:///") and not given.startswith("sqlite:////"):
        given = f"sqlite:///{Path(given[len('sqlite:///'):]).resolve()}"  # relative to where the command runs
    storage = open_storage(given)
    url = storage_url(given)
    shared_storage = not url.startswith("sqlite")
    before = None
    if args.study in optuna.study.get_all_study_names(storage):
        before = optuna.load_study(study_name=args.study, storage=storage)
    began = before.user_attrs.get("sweep") if before else None
    head = git_commit("HEAD", root)
    baseline = began["baseline"] if isinstance(began, dict) and "baseline" in began else head
    try:
        git_commit(baseline, root)
    except DataError:
        raise PipelineError(f"study '{args.study}' runs its trials on commit {baseline[:12]}, which this repository "
                            f"doesn't have: git fetch it (or start another study with --study NAME)") from None
    base = params_at(root, baseline)
    fixed = parse_fixed(args.fixed, base)
    space_file = args.space or Path(os.path.relpath(root / SPACE_FILE))  # named in messages as the user sees it
    config = load_space(space_file, base, fixed)
    shared = {"baseline": baseline, "space": config.as_dict(), "fixed": fixed,
              "objective": f"maximise {OBJECTIVE} (validation accuracy)"}
    trials_before = len(before.get_trials(deepcopy=False)) if before else 0
    # The same study started afresh asks for the same first trials; a resumed or a shared
    # one gets other draws (a worker of a shared study: its own).
    seed = config.seed + trials_before + (os.getpid() if shared_storage else 0)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=config.startup_trials, constant_liar=True)
    pruner = optuna.pruners.PercentilePruner(config.prune_percentile, n_startup_trials=config.prune_startup_trials,
                                             n_warmup_steps=config.prune_min_epochs)
    lock = StudyLock(storage, url, args.study)

    taken = [] if before else existing_names(root, baseline, args.study)
    if taken:
        raise ParamError(f"--study {args.study}: this commit already has experiments of that name "
                         f"({', '.join(taken[:3])}{', ...' if len(taken) > 3 else ''}), from a study whose "
                         f"storage is gone: name another study, or remove them with "
                         f"`dvc exp remove {' '.join(taken[:3])}{' ...' if len(taken) > 3 else ''}`")

    def on_create(study: optuna.Study) -> None:  # the first trial: params.yaml's own values
        defaults = with_fixed(base, fixed)
        values = {name: value_of(defaults, name) for name in config.distributions}
        if all(inside(d, values[name]) for name, d in config.distributions.items()):
            study.enqueue_trial(values, user_attrs={DEFAULTS: True})

    study, shared = open_study(storage, args.study, sampler, pruner, lock, shared, on_create)
    push = None if args.no_push else (args.push or ("origin" if shared_storage else None))
    share = max(1, cores() // args.jobs)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": str(share), "MKL_NUM_THREADS": str(share)}
    print(f"study '{args.study}' in {shown_url(given)}: {args.trials} trial(s) of {space_file} "
          f"on commit {baseline[:12]}" + (f" (HEAD is {head[:12]})" if head != baseline else "")
          + (f", with {' '.join(f'-S {k}={v}' for k, v in fixed.items())}" if fixed else ""), flush=True)
    if head == baseline:
        changed = git("diff", "--name-only", "HEAD", cwd=root).splitlines()
        if changed:
            print(f"warning: uncommitted changes ({', '.join(changed[:4])}{', ...' if len(changed) > 4 else ''}) "
                  f"are not part of the trials: they run on the commit", flush=True)
    crowded = f" (more jobs than the {cores()} cores: they share them)" if args.jobs > cores() else ""
    print(f"objective: maximise validation accuracy ({OBJECTIVE}); {args.jobs} job(s), {share} thread(s) each"
          f"{crowded}; watch it live: optuna-dashboard {shown_url(url)}", flush=True)
    workspaces = []
    sweep = Sweep(args, root, storage, url, study, lock, config, shared, fixed, base, workspaces, env, push)
    for number in fail_lost_trials(study, storage, sweep.me):
        print(f"trial {number}: its sweep was killed in the middle of it; it will be run again", flush=True)
    to_start, elsewhere = remaining(sweep)
    if to_start or elsewhere:  # trials running elsewhere may be lost, and re-run here
        cache_dir = run_quiet([dvc_command(), "cache", "dir"], root, "dvc cache dir", env).strip()
        workspaces += Workspace.take(root, args.jobs)
        for ws in workspaces:
            ws.prepare(baseline, cache_dir, env, sweep.out / "logs" / f"prepare-{ws.index}.log")
    code = 0
    try:
        if to_start or elsewhere:
            code = run_trials(sweep)
    except KeyboardInterrupt:
        print(stop_trials(sweep, "interrupted"), file=sys.stderr, flush=True)
        return 130
    except Terminated:
        print(stop_trials(sweep, "terminated"), file=sys.stderr, flush=True)
        return 128 + signal.SIGTERM
    finish(sweep)
    return code


def _hangup(signum, frame):  # a closed terminal: stop the trials as SIGTERM would
    raise Terminated()


def main() -> None:
    signal.signal(signal.SIGHUP, _hangup)
    run(cli)


if __name__ == "__main__":
    main()
