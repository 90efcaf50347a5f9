"""fmnist-sweep end to end: real DVC experiments in a throwaway copy of the pipeline, on tiny data.

The copies drop the export stage (seconds a trial that a sweep doesn't need: it scores
validation accuracy and reports test accuracy); everything else is the real dvc.yaml.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from glob import glob
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from fmnist.sweep.study import storage_url
from helpers.data import write_raw
from helpers.processes import default_sigint
from helpers.repos import make_repo
from helpers.tools import POSTGRES_HINT, missing

SWEEP = str(Path(sys.executable).parent / "fmnist-sweep")
# A small net that learns the synthetic images in an epoch or two.
PARAMS = {"data": {"val_size": 60},
          "train": {"model": "cnn3_small", "epochs": 2, "batch_size": 32, "lr": 0.05, "device": "cpu"},
          "evaluate": {"batch_size": 64, "misclassified": 6}}


def sweep_repo(path: Path, raw: Path, space: str, params: dict = PARAMS, patch=None):
    """A copy of the pipeline without its export stage, with `space` as sweep.yaml, committed."""
    repo = make_repo(path, raw, params=params)
    dvc_yaml = yaml.safe_load((repo.path / "dvc.yaml").read_text())
    del dvc_yaml["stages"]["export"]
    (repo.path / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    (repo.path / "sweep.yaml").write_text(space)
    if patch:
        patch(repo.path)
    repo.commit("sweep")
    return repo


def sweep(repo, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([SWEEP, *args], cwd=repo.path, env=repo.env, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"fmnist-sweep {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def study_trials(repo, name: str = "sweep", url: str | None = None) -> list:
    url = url or f"sqlite:///{repo.path / '.dvc/tmp/sweep/optuna.db'}"
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def experiments(repo) -> dict[str, dict]:
    """Name -> {"params": train params, "metrics": {...}} of the experiments `dvc exp show` lists."""
    shown = json.loads(repo.dvc("exp", "show", "--json").stdout)
    found = {}
    for entry in shown:
        for exp in entry.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev["data"]
                found[rev["name"]] = {
                    "params": data["params"]["params.yaml"]["data"]["train"],
                    "metrics": {k: v for m in data["metrics"].values() for k, v in m["data"].items()}}
    return found


def started_trials(output: str) -> list[int]:
    """The trials a sweep's output says it started."""
    return [int(line.split()[1]) for line in output.splitlines() if line.startswith("trial ") and ") in " in line]


def wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended ({proc.returncode}) before {path} said {text!r}: "
                                 f"{proc.communicate()}")
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"{path} never said {text!r}")


def fail_when_lr_is(value: float):
    """A pipeline whose train stage fails for one learning rate: a trial that fails for a reason of its own."""
    def patch(path: Path) -> None:
        stage = path / "stages/train.py"
        text = stage.read_text()
        anchor = "    p = load_params(model_problem=name_problem).train\n"
        imports = "from fmnist.core.errors import run\n"
        assert anchor in text and imports in text
        text = text.replace(imports, "from fmnist.core.errors import ParamError, run\n")
        stage.write_text(text.replace(anchor, anchor + f"    if p.lr == {value}:\n"
                                      f'        raise ParamError("train.lr: {value} is refused by this test")\n'))
    return patch


@pytest.mark.e2e
def test_trials_are_experiments_two_at_a_time_a_failure_is_kept_and_a_resumed_sweep_adds_only_the_missing(tmp_path):
    # The defaults' trial (lr 0.05) fails for a reason of its own; the others train.
    repo = sweep_repo(tmp_path / "repo", write_raw(tmp_path / "raw"), patch=fail_when_lr_is(0.05),
                      space="space:\n  train.lr: {low: 0.01, high: 0.1, log: true}\n"
                            "  train.label_smoothing: {choices: [0.0, 0.1]}\n")
    out = sweep(repo, "--trials", "3", "--jobs", "2", "-S", "train.epochs=1").stdout
    assert "2 job(s), 1 thread(s) each" in out, out  # the cores (here one, OMP_NUM_THREADS), shared
    trials = study_trials(repo)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE], out
    assert trials[0].user_attrs["defaults"] and trials[0].params == {"train.lr": 0.05, "train.label_smoothing": 0.1}
    # Two at once, each in its own copy of the repository.
    assert trials[1].datetime_start < trials[0].datetime_complete
    assert trials[0].datetime_start < trials[1].datetime_complete
    logs = [(repo.path / "reports/sweep/sweep/logs" / f"sweep-{i}.log").read_text() for i in (0, 1)]
    assert {log.split()[1] for log in logs} == {".dvc/tmp/sweep/workspaces/0", ".dvc/tmp/sweep/workspaces/1"}
    assert all("OMP_NUM_THREADS=1" in log for log in logs)

    # The failed trial: its reason, and where its log is, which says it too.
    reason = "error: train.lr: 0.05 is refused by this test"
    assert trials[0].user_attrs["failure"] == reason
    line = f"failed: trial 0 (sweep-0): {reason} (log: "
    assert line in out, out
    assert reason in (repo.path / out.split(line)[1].split(")")[0].split(":", 1)[1]).read_text()

    # Every other trial is a DVC experiment of the commit, with its params and metrics.
    exps = experiments(repo)
    assert set(exps) == {"sweep-1", "sweep-2"}, exps
    for t in trials[1:]:
        exp = exps[f"sweep-{t.number}"]
        assert exp["params"]["lr"] == t.params["train.lr"] and exp["params"]["epochs"] == 1
        assert exp["params"]["label_smoothing"] == t.params["train.label_smoothing"]
        assert exp["metrics"]["best_val_acc"] == t.value and exp["metrics"]["test_acc"] == t.user_attrs["test_acc"]
    best = max(trials[1:], key=lambda t: (t.value, -t.number))
    assert f"apply it: dvc exp apply sweep-{best.number}" in out, out
    table = out[out.index("rank  trial"):].splitlines()
    assert table[1].split()[2] == f"sweep-{best.number}"  # best first
    for name in ("optimization_history.png", "param_importances.png"):
        assert (repo.path / "reports/sweep/sweep" / name).read_bytes()[:4] == b"\x89PNG"
    assert repo.run("git", "status", "--porcelain").stdout == ""  # nothing of the sweep in git's view

    # The same command with more trials runs only the missing one (the failed trial counts).
    again = sweep(repo, "--trials", "4", "--jobs", "2", "-S", "train.epochs=1").stdout
    assert started_trials(again) == [3], again
    assert set(experiments(repo)) == {"sweep-1", "sweep-2", "sweep-3"}
    best = max(study_trials(repo)[1:], key=lambda t: (t.value, -t.number))

    # The best one applies, and branches, like any experiment.
    repo.dvc("exp", "apply", f"sweep-{best.number}")
    applied = yaml.safe_load((repo.path / "params.yaml").read_text())["train"]
    assert applied["lr"] == best.params["train.lr"] and applied["epochs"] == 1
    assert json.loads((repo.path / "metrics/train.json").read_text())["best_val_acc"] == best.value
    repo.dvc("exp", "branch", f"sweep-{best.number}", "tuned")
    assert yaml.safe_load(repo.run("git", "show", "tuned:params.yaml").stdout)["train"]["lr"] == best.params["train.lr"]


@pytest.mark.e2e
def test_a_trial_behind_the_others_is_pruned_and_its_experiment_shows_what_it_did(tmp_path):
    # Epochs of a few seconds, checked every 50 batches: the stop request lands mid-epoch.
    params = {**PARAMS, "train": {**PARAMS["train"], "epochs": 3, "batch_size": 16}}
    repo = sweep_repo(tmp_path / "repo", write_raw(tmp_path / "raw", n_train=2000), params=params, space=(
        # The defaults (lr 0.05) learn the images in an epoch; the others' rates are far too low.
        "space:\n  train.lr: {choices: [0.05, 1.0e-6, 2.0e-6, 3.0e-6, 5.0e-6, 1.0e-5, 2.0e-5]}\n"
        "pruner: {percentile: 50, startup_trials: 1, min_epochs: 1}\n"))
    out = sweep(repo, "--trials", "3").stdout
    trials = study_trials(repo)
    assert trials[0].state == TrialState.COMPLETE and trials[0].user_attrs["defaults"], out
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, out
    exps = experiments(repo)
    for t in pruned:
        exp = exps[f"sweep-{t.number}"]["metrics"]
        # Stopped before its last epoch, with the epochs it did, and a test score of that model.
        assert exp["stopped_early"] is True and exp["epoch"] < 3 and exp["epoch"] == t.user_attrs["epochs"], exp
        assert exp["epoch"] >= t.user_attrs["pruned_after_epoch"] and "test_acc" in exp
        log = (repo.path / f"reports/sweep/sweep/logs/sweep-{t.number}.log").read_text()
        assert f"stopped after epoch {exp['epoch']} of 3" in log, log
    assert exps["sweep-0"]["metrics"]["epoch"] == 3 and "stopped_early" not in exps["sweep-0"]["metrics"]
    rows = [line.split() for line in out.splitlines() if line[:1].isdigit()]
    assert [r[3] for r in rows if r[2] == f"sweep-{pruned[0].number}"] == ["pruned"], out


def leftovers(workspace: Path) -> list[int]:
    """Processes whose working folder is in `workspace`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            continue
        if cwd == workspace or workspace in cwd.parents:
            found.append(int(pid))
    return found


@pytest.mark.e2e
def test_ctrl_c_and_a_killed_sweep_leave_a_study_that_reruns_the_interrupted_trial(tmp_path):
    # Eight short epochs (under a second each): after the first, time for the signal to land mid-trial
    # even on a loaded machine (with three, a CI run once saw the trial end first).
    params = {**PARAMS, "train": {**PARAMS["train"], "epochs": 8, "batch_size": 16}}
    repo = sweep_repo(tmp_path / "repo", write_raw(tmp_path / "raw", n_train=2000), params=params,
                      space="space:\n  train.lr: {low: 0.01, high: 0.1, log: true}\n")
    logs = repo.path / "reports/sweep/sweep/logs"
    env = {**repo.env, "PYTHONUNBUFFERED": "1"}

    def start() -> subprocess.Popen:
        # Its own session, as a terminal's job: Ctrl-C goes to the sweep's group alone.
        # SIGINT as a terminal has it, even when this suite runs as a background job (SIGINT ignored).
        return subprocess.Popen([SWEEP, "--trials", "1"], cwd=repo.path, env=env, text=True, start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=default_sigint)  # noqa: PLW1509 (only sets a signal disposition)

    # Ctrl-C in the middle of trial 0: it ends, recorded as interrupted, in one line.
    proc = start()
    wait_for(logs / "sweep-0.log", "epoch 1/8", proc)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert err.count("\n") == 1 and err.startswith("interrupted: stopped trial(s) 0; study 'sweep' is consistent"), err
    assert "interrupted; outputs" not in err  # the stage's own line is in the trial's log, not here
    assert "interrupted; outputs are written whole or not at all" in (logs / "sweep-0.log").read_text()
    [t0] = study_trials(repo)
    assert t0.state == TrialState.FAIL and "failure" not in t0.user_attrs
    workspace = repo.path / ".dvc/tmp/sweep/workspaces/0"
    assert leftovers(workspace) == []

    # Again, and killed in the middle of the re-run (the trial's processes live on).
    proc = start()
    wait_for(logs / "sweep-1.log", "epoch 1/8", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert leftovers(workspace), "the killed sweep's trial should still be running"
    trials = study_trials(repo)
    assert trials[1].state == TrialState.RUNNING and trials[1].user_attrs["rerun_of"] == 0
    assert trials[1].params == t0.params

    # Again: what the killed one left running is ended, its trial is re-run, and the study has its one trial.
    out = sweep(repo, "--trials", "1").stdout
    assert "trial 1: its sweep was killed in the middle of it; it will be run again" in out, out
    assert started_trials(out) == [2], out
    trials = study_trials(repo)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[2].user_attrs["rerun_of"] == 1 and trials[2].params == t0.params and trials[2].user_attrs["defaults"]
    assert set(experiments(repo)) == {"sweep-2"}
    assert leftovers(workspace) == []
    assert ("interrupted: trial 0 (the sweep was stopped (Ctrl-C or SIGTERM) in the middle of it); "
            "re-run as trial 1") in out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def no_server(reason: str):
    # CI installs PostgreSQL (.ci/run, test.yml): there, a missing server is a failure, never a skip.
    missing(f"a PostgreSQL server ({reason})", POSTGRES_HINT)


@pytest.fixture
def postgres():
    """A PostgreSQL server of its own on 127.0.0.1, from a temporary data folder; its URL."""
    initdb = shutil.which("initdb") or next(iter(sorted(glob("/usr/lib/postgresql/*/bin/initdb"))[-1:]), None)
    if initdb is None:
        no_server("initdb not found")
    bindir = Path(initdb).parent
    as_user = []
    folder = Path(tempfile.mkdtemp(prefix="fmnist-pg-"))  # in /tmp: the server's user must reach it
    if os.geteuid() == 0:  # the server refuses to run as root: as the user Debian's package makes
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            no_server("running as root and there is no postgres user to run the server as")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = folder / "data"
    try:
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "sweep", "--auth=trust", "-E",
                        "UTF8"], check=True, capture_output=True, text=True)
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
                        f"-h 127.0.0.1 -p {port} -k {folder}", "start"], check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        no_server(f"the PostgreSQL server did not start: {exc.stderr.strip()[-300:]}")
    try:
        yield f"postgresql://sweep@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.e2e
def test_two_machines_share_a_study_through_postgresql_and_push_their_experiments(tmp_path, postgres):
    """Two workers in two clones of one origin, a third clone that pulls: every trial once,
    none lost, all of them visible everywhere."""
    source = sweep_repo(tmp_path / "source", write_raw(tmp_path / "raw"),
                        "space:\n  train.lr: {low: 0.01, high: 0.1, log: true}\n")
    origin = tmp_path / "origin.git"
    source.run("git", "clone", "-q", "--bare", str(source.path), str(origin))
    clones = []
    for name in ("a", "b", "c"):  # side by side: their default DVC remote is tmp_path/fmnist-dvc-remote
        source.run("git", "clone", "-q", str(origin), str(tmp_path / name))
        clones.append(type(source)(tmp_path / name, {**source.env, "PYTHONPATH": str(tmp_path / name)}))
    a, b, c = clones
    args = ["--trials", "3", "--storage", postgres, "-S", "train.epochs=1"]
    workers = [subprocess.Popen([SWEEP, *args], cwd=w.path, env=w.env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT) for w in (a, b)]
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    ran = [started_trials(out) for out in outputs]
    assert sorted(ran[0] + ran[1]) == [0, 1, 2], outputs  # every trial once, by one worker or the other
    assert ran[0] and ran[1], outputs  # both took part
    trials = optuna.load_study(study_name="sweep", storage=storage_url(postgres)).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3

    # Everything reached the remotes: a third clone pulls all three, and applies one.
    remote_refs = c.run("git", "ls-remote", "origin", "refs/exps/*").stdout
    assert sorted(ref.rsplit("/", 1)[1] for ref in remote_refs.split() if ref.startswith("refs/")) == \
        [f"sweep-{i}" for i in range(3)]
    c.dvc("exp", "pull", "origin", "--rev", "HEAD")
    exps = experiments(c)
    assert set(exps) == {f"sweep-{i}" for i in range(3)}
    for t in trials:
        assert exps[f"sweep-{t.number}"]["metrics"]["best_val_acc"] == t.value
        assert exps[f"sweep-{t.number}"]["params"]["lr"] == t.params["train.lr"]
    c.dvc("exp", "apply", "sweep-2")
    assert (c.path / "models/model.pt").is_file()  # its outputs came from the DVC remote
