"""Copies of the repository where a sweep's trials run, one at a time each, as DVC experiments.

    spaces = Workspace.take(root, count=2)          # .dvc/tmp/sweep/workspaces/0, 1 (locked for this process)
    ws = spaces[0]
    ws.prepare(baseline, cache_dir, log)            # a git clone at the commit, sharing the DVC cache
    run = ws.start("sweep-3", ["train.lr=0.1"], env, log)   # `dvc exp run -n sweep-3 -S ...`
    run.epochs()                                    # validation accuracy of each epoch done so far
    run.stop_early()                                # the train stage ends after its last whole epoch
    run.wait(); ws.results(); ws.publish("sweep-3")  # the experiment into the repository

Each copy is a git clone of the repository (as DVC's queue makes for each queued run):
its own work tree, git refs and DVC lock, so trials in different copies can't step on
each other, and the DVC cache of the repository, so data and models are stored once and
every experiment can be applied in the repository. A trial runs in its own process group
(the sweep forwards Ctrl-C to it, and can stop it alone); the group's id is kept in a file
so that a sweep started after one that was killed ends what the killed one left running.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from fmnist.core.errors import PipelineError
from fmnist.serve.provenance import pipeline_paths

SWEEP_DIR = ".dvc/tmp/sweep"  # git-ignored (DVC's tmp), beside the default SQLite storage
STOP_ENV = "FMNIST_STOP_FILE"  # the train stage stops after its last whole epoch once this file exists
DATA_STAGE = "prepare"  # the last stage before training: made once, before the trials (see prepare)


def dvc_command() -> str:
    """The dvc of this Python's environment, where the sweep's own console script lives."""
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.exists() else "dvc"


def run_quiet(cmd: list[str], cwd: Path, what: str, env: dict | None = None) -> str:
    """Run a short command; its stdout, or a PipelineError naming `what` and the command's last line."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    except OSError as exc:
        raise PipelineError(f"{what}: can't run {cmd[0]} ({exc.strerror or exc})") from None
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        raise PipelineError(f"{what}: `{' '.join(cmd[:3])} ...` exited {proc.returncode}: "
                            f"{lines[-1].strip() if lines else 'no output'}")
    return proc.stdout


def last_error(log: Path) -> str:
    """The line of a trial's log that says why it failed: a stage's `error:` line, else DVC's, else the last."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.path.getsize(log) - 64_000))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    for prefix in ("error:", "ERROR:"):
        found = [line for line in lines if line.startswith(prefix)]
        if found:
            return found[-1][:300]
    return lines[-1][:300] if lines else "the log is empty"


def _pgrp(pid: str) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[2])
    except (OSError, ValueError, IndexError):
        return None


# The train stage's line after each epoch (stages/train.py), in the trial's own log: unlike
# DVCLive's files in the workspace, which DVC first restores from the previous run, it can
# only come from this run.
EPOCH_LINE = re.compile(rb"^epoch (\d+)/\d+: .*\| val loss \S+ acc ([0-9.]+)", re.M)


class Run:
    """One trial's `dvc exp run`, in its own process group."""

    def __init__(self, proc: subprocess.Popen, workspace: Workspace, log: Path):
        self.proc, self.workspace, self.log = proc, workspace, log
        self._read, self._accs = 0, []

    def epochs(self) -> list[float]:
        """Validation accuracy of each epoch the train stage has reported so far."""
        try:
            with open(self.log, "rb") as f:
                f.seek(self._read)
                chunk = f.read(1 << 20)
        except OSError:
            return list(self._accs)
        whole = chunk[:chunk.rfind(b"\n") + 1]  # not a line still being written
        self._read += len(whole)
        for m in EPOCH_LINE.finditer(whole):
            if int(m.group(1)) == len(self._accs) + 1:
                self._accs.append(float(m.group(2)))
        return list(self._accs)

    def stop_early(self) -> None:
        self.workspace.stop_file.write_text("stop after the last whole epoch (pruned by the sweep)\n")

    def poll(self) -> int | None:
        return self.proc.poll()

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout)


class Workspace:
    """One copy of the repository, used by one sweep process at a time (a file lock says which)."""

    def __init__(self, root: Path, index: int):
        self.root, self.index = root, index
        folder = root / SWEEP_DIR / "workspaces"
        self.path = folder / str(index)
        self._lock_path, self._pgid_path = folder / f"{index}.lock", folder / f"{index}.pgid"
        self.stop_file = folder / f"{index}.stop"
        self._lock = None
        self.paths = pipeline_paths(root, "train_summary", "eval")

    @classmethod
    def take(cls, root: Path, count: int) -> list[Workspace]:
        """`count` workspaces no other sweep process holds, locked for this one until it exits."""
        taken, index = [], 0
        while len(taken) < count:
            ws = cls(root, index)
            ws._lock_path.parent.mkdir(parents=True, exist_ok=True)
            f = open(ws._lock_path, "a")  # noqa: SIM115 - held open, and so locked, until the sweep exits
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
            else:
                ws._lock = f
                taken.append(ws)
            index += 1
        return taken

    def shown(self) -> str:
        return str(self.path.relative_to(self.root))

    def end_leftovers(self) -> None:
        """SIGKILL what a killed sweep left running here: processes of the trial's process
        group whose working folder is in this workspace (so no stranger is ever hit)."""
        try:
            pgid = int(self._pgid_path.read_text())
        except (OSError, ValueError):
            return
        for pid in (p for p in os.listdir("/proc") if p.isdigit()) if os.path.isdir("/proc") else []:
            if _pgrp(pid) != pgid:
                continue
            try:
                cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
            except OSError:
                continue
            if cwd == self.path or self.path in cwd.parents:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        self._pgid_path.unlink(missing_ok=True)

    def prepare(self, baseline: str, cache_dir: str, env: dict, log: Path) -> None:
        """Make this copy a clone of the repository at `baseline`, sharing its DVC cache,
        with the data stages' outputs in place (made once, or restored from the cache)."""
        self.end_leftovers()
        what = f"workspace {self.shown()}"
        if not (self.path / ".git").is_dir():
            shutil.rmtree(self.path, ignore_errors=True)
            run_quiet(["git", "clone", "--quiet", "--no-checkout", str(self.root), str(self.path)], self.root, what)
        else:  # the repository may have new commits since the copy was made
            run_quiet(["git", "fetch", "--quiet", "origin"], self.path, what)
        run_quiet(["git", "checkout", "--quiet", "--force", "--detach", baseline], self.path, what)
        # No DVC process runs here now (this process holds the workspace, leftovers are ended):
        # the lock files of one that was killed, perhaps while writing them, can go.
        for name in ("lock", "rwlock"):
            (self.path / ".dvc" / "tmp" / name).unlink(missing_ok=True)
        run_quiet([dvc_command(), "config", "--local", "cache.dir", cache_dir], self.path, what, env)
        self.stop_file.unlink(missing_ok=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as out:
            out.write(f"# {what}: dvc repro {DATA_STAGE}\n")
            out.flush()
            code = subprocess.run([dvc_command(), "repro", DATA_STAGE], cwd=self.path, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
        if code != 0:
            raise PipelineError(f"the data for the trials could not be made in {what}: {last_error(log)} "
                                f"(log: {log})")

    def _drop_experiment(self, name: str) -> None:
        refs = run_quiet(["git", "for-each-ref", "--format=%(refname)", "refs/exps/"], self.path, self.shown())
        for ref in refs.split():
            if ref.endswith("/" + name) and not ref.startswith("refs/exps/exec/"):
                run_quiet(["git", "update-ref", "-d", ref], self.path, self.shown())

    def start(self, name: str, overrides: list[str], env: dict, log: Path, baseline: str) -> Run:
        """`dvc exp run -n NAME -S ...` from a clean copy of `baseline`, output to `log`."""
        run_quiet(["git", "reset", "--quiet", "--hard", baseline], self.path, self.shown())
        self._drop_experiment(name)  # an earlier run of this name here (its sweep was killed before it was told)
        self.stop_file.unlink(missing_ok=True)
        cmd = [dvc_command(), "exp", "run", "-n", name, *[a for o in overrides for a in ("-S", o)]]
        env = {**env, STOP_ENV: str(self.stop_file),
               # The copy's own package, not the one installed in the environment (the repository's).
               "PYTHONPATH": os.pathsep.join([str(self.path), *filter(None, [env.get("PYTHONPATH")])])}
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as out:
            out.write(f"# {self.shown()} at {baseline[:12]}, OMP_NUM_THREADS={env.get('OMP_NUM_THREADS')}: "
                      f"{' '.join(cmd[1:])}\n")
            out.flush()
            proc = subprocess.Popen(cmd, cwd=self.path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self._pgid_path.write_text(str(proc.pid))
        return Run(proc, self, log)

    def finished(self) -> None:
        self._pgid_path.unlink(missing_ok=True)
        self.stop_file.unlink(missing_ok=True)

    def results(self) -> tuple[dict, dict]:
        """The train stage's summary and the test metrics of the run that just ended here."""
        out = []
        for key in ("train_summary", "eval"):
            path = self.path / self.paths[key]
            try:
                with open(path, "rb") as f:
                    data = json.loads(f.read(100_000))
            except (OSError, ValueError) as exc:
                raise PipelineError(f"{path}: the trial's {key} could not be read ({exc})") from None
            if not isinstance(data, dict):
                raise PipelineError(f"{path}: expected a JSON object")
            out.append(data)
        return out[0], out[1]

    def publish(self, name: str, env: dict) -> None:
        """The experiment, from this copy into the repository (whose DVC cache it already shares)."""
        run_quiet([dvc_command(), "exp", "push", "--no-cache", "origin", name], self.path,
                  f"copying experiment {name} into the repository", env)
        self._drop_experiment(name)


def push_experiment(root: Path, remote: str, name: str, env: dict, tries: int = 3) -> None:
    """`dvc exp push REMOTE NAME` in the repository: the experiment's commit to the git
    remote, its outputs to the default DVC remote, so `dvc exp pull` finds it anywhere."""
    for attempt in range(tries):
        try:
            run_quiet([dvc_command(), "exp", "push", remote, name], root, f"pushing experiment {name} to {remote}",
                      env)
            return
        except PipelineError:
            if attempt == tries - 1:
                raise
            time.sleep(2 + 3 * attempt)  # another dvc command may hold the repository's lock
