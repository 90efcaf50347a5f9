"""The Optuna study of a sweep: where it is stored, which trials count, and which are re-run.

    storage = open_storage("sqlite:///.dvc/tmp/sweep/optuna.db")   # ParamError when it can't be used
    lock = StudyLock(storage, url, "sweep")
    study = open_study(storage, "sweep", sampler, pruner, lock, attrs)
    with lock.held():
        plan = plan_trials(study.get_trials(deepcopy=False))

Bookkeeping lives in the trials' user attributes, so any worker, on any machine, reads
the same story from the storage:

- a trial that failed for a reason of its own (its run exited with an error) carries
  FAILURE, the reason; it counts as one of the N trials, and is not run again;
- a trial that failed without one was interrupted (Ctrl-C, the sweep was killed, its
  worker stopped sending heartbeats): it is re-run once, as a new trial with the same
  params and RERUN_OF naming it, which counts in its place;
- WORKER says which process on which machine runs a trial, so that a sweep started again
  on the same machine fails at once the trials of a sweep that was killed, instead of
  waiting for their heartbeats to go stale.

Starting trials happens under StudyLock (a file lock beside a SQLite file, an advisory
lock on PostgreSQL), so that workers sharing a study never start more than N trials.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import re
import socket
import threading
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from fmnist.core.errors import DataError, ParamError, flat
from fmnist.core.io import check_input

DEFAULT_STORAGE = ".dvc/tmp/sweep/optuna.db"  # under the repository's top folder: DVC's git-ignored tmp
HEARTBEAT_SECONDS = 10  # a running trial's worker records a heartbeat this often
GRACE_SECONDS = 120  # a trial whose worker has been silent this long is failed and re-run elsewhere

FAILURE = "failure"  # why a trial failed of its own accord (the last error line of its log)
INTERRUPTED = "interrupted"  # why a trial was stopped from outside; it is re-run
RERUN_OF = "rerun_of"  # the number of the interrupted trial this one re-runs
WORKER = "worker"  # {"host", "boot", "pid"} of the process that runs it
EXPERIMENT = "experiment"  # the DVC experiment's name
LOG = "log"  # host:path of the trial's log
DEFAULTS = "defaults"  # true for the trial of the params' own values

STUDY_ATTR = "sweep"  # the study's user attribute holding what every trial shares


def default_storage_url(root: Path) -> str:
    return f"sqlite:///{root / DEFAULT_STORAGE}"


def shown_url(url: str) -> str:
    """The URL with any password masked, for messages."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _sqlite_path(url: str) -> Path | None:
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


def lock_file(database: Path) -> Path:
    """The file beside a SQLite study that StudyLock locks."""
    return database.with_name(database.name + ".lock")


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error
    text = str(orig).strip().splitlines()
    return flat(text[0], 200) if text else type(orig).__name__


def storage_url(url: str) -> str:
    """`url` with PostgreSQL's driver named: psycopg (3), a dependency, whatever SQLAlchemy's
    default for a bare postgresql:// is (psycopg2 before SQLAlchemy 2.1, psycopg after)."""
    return "postgresql+psycopg://" + url[len("postgresql://"):] if url.startswith("postgresql://") else url


def open_storage(url: str) -> RDBStorage:
    """Optuna's RDB storage at `url` (SQLite or PostgreSQL), connected and with its tables."""
    shown = shown_url(url)
    url = storage_url(url)
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in ("sqlite", "postgresql+psycopg", "postgresql+psycopg2"):
        raise ParamError(f"--storage {shown}: expected sqlite:///PATH or postgresql://USER@HOST[:PORT]/DATABASE "
                         f"(starting trials is locked in the database, which the sweep does for these two)")
    path = _sqlite_path(url)
    if path is not None:
        # SQLite would wait on a named pipe (and so would the lock file's open): whatever is
        # there must be a file, or nothing yet.
        for file in (path, lock_file(path)):
            try:
                check_input(file, "--storage sqlite:///PATH names a SQLite database file", missing_ok=True,
                            pipes=False)
            except DataError as exc:
                raise ParamError(str(exc)) from None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ParamError(f"--storage {shown}: can't create {path.parent} ({exc.strerror or exc})") from None
        engine = {"connect_args": {"timeout": 60}}  # threads and processes take turns writing
    else:
        engine = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    for attempt in range(4):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # heartbeats outside Study.optimize: we record them ourselves
                return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_SECONDS,
                                  grace_period=GRACE_SECONDS)
        except ImportError as exc:  # Optuna's, when SQLAlchemy finds no driver
            missing = getattr(exc.__cause__, "name", None) or "its driver"
            raise ParamError(f"--storage {shown}: needs the Python package {missing}; pip install it") from None
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy's and the drivers' errors have no common base
            reason = _reason(exc)
            # Workers that start together on a new database race to create Optuna's tables.
            if attempt < 3 and ("duplicate key" in reason or "already exists" in reason):
                time.sleep(0.5 + random.random())  # noqa: S311 - jitter between racing workers, not a secret
                continue
            raise ParamError(f"--storage {shown}: can't be reached: {reason}") from None


class StudyLock:
    """Held while a worker decides and starts trials: by threads of this process, by the
    processes sharing a SQLite file, by workers on any machine sharing a PostgreSQL study."""

    def __init__(self, storage: RDBStorage, url: str, study: str):
        self._storage, self._threads = storage, threading.Lock()
        path = _sqlite_path(url)
        self._file = lock_file(path) if path else None
        self._key = zlib.crc32(f"fmnist-sweep:{study}".encode())

    @contextlib.contextmanager
    def held(self):
        with self._threads:
            if self._file is not None:
                with open(self._file, "a") as f:
                    fcntl.flock(f, fcntl.LOCK_EX)
                    try:
                        yield
                    finally:
                        fcntl.flock(f, fcntl.LOCK_UN)
            else:
                from sqlalchemy import text

                with self._storage.engine.connect() as conn:
                    conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
                    conn.commit()
                    try:
                        yield
                    finally:
                        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
                        conn.commit()


def _difference(then: Any, now: Any, prefix: str = "") -> str:
    """The first place where two descriptions differ, as `key: THEN then, NOW now`."""
    if isinstance(then, dict) and isinstance(now, dict):
        for key in sorted(set(then) | set(now), key=str):
            if then.get(key) != now.get(key):
                return _difference(then.get(key), now.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.') or 'it'}: {then!r} then, {now!r} now"


def open_study(storage: RDBStorage, name: str, sampler, pruner, lock: StudyLock, shared: dict,
               on_create: Callable[[optuna.Study], None] = lambda study: None) -> tuple[optuna.Study, dict]:
    """The study `name` (created when new, then handed to `on_create`, still under the
    lock) and what its trials share (`shared` when new).

    A study keeps what it began with: its baseline commit, its space and the -S params.
    A sweep that asks for another space or other -S params is refused (one line that
    says where they differ); the commit is the study's, whatever is checked out now.
    """
    with lock.held():
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True,
                                    sampler=sampler, pruner=pruner)
        if study.direction != optuna.study.StudyDirection.MAXIMIZE:
            raise ParamError(f"--study {name}: that study minimises its objective; it is not a sweep's")
        began = study.user_attrs.get(STUDY_ATTR)
        if began is None:
            # (A sweep killed while it created the study may have left the defaults' trial alone.)
            if any(not t.user_attrs.get(DEFAULTS) for t in study.get_trials(deepcopy=False)):
                raise ParamError(f"--study {name}: that study was not made by fmnist-sweep; name another")
            if not study.get_trials(deepcopy=False):
                on_create(study)
            study.set_user_attr(STUDY_ATTR, shared)
            return study, shared
    for key, what in (("space", "another search space (--space: its space, sampler or pruner)"),
                      ("fixed", "other -S params")):
        if began.get(key) != shared.get(key):
            raise ParamError(f"--study {name} began with {what} "
                             f"({_difference(began.get(key), shared.get(key))}); a study keeps them: "
                             f"give the same, or start another with --study NAME")
    return study, began


@dataclass(frozen=True)
class Worker:
    host: str
    boot: str
    pid: int

    @classmethod
    def me(cls) -> Worker:
        try:
            boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            boot = ""
        return cls(socket.gethostname(), boot, os.getpid())

    def as_dict(self) -> dict:
        return {"host": self.host, "boot": self.boot, "pid": self.pid}

    def gone(self, attrs: Any) -> bool:
        """Whether `attrs` (a trial's WORKER) names a process of this machine that has ended."""
        if not isinstance(attrs, dict) or attrs.get("host") != self.host or attrs.get("boot") != self.boot:
            return False
        pid = attrs.get("pid")
        if not isinstance(pid, int) or pid == self.pid:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def interrupted(t: FrozenTrial) -> bool:
    return t.state == TrialState.FAIL and FAILURE not in t.user_attrs


@dataclass
class Plan:
    counted: int  # trials that count towards N: finished, failed of their own accord, running, waiting
    reruns: list[FrozenTrial]  # interrupted trials not yet re-run, oldest first
    running: list[FrozenTrial]


def plan_trials(trials: list[FrozenTrial]) -> Plan:
    rerun = {t.user_attrs[RERUN_OF] for t in trials if RERUN_OF in t.user_attrs}
    counted = [t for t in trials if not interrupted(t)]
    reruns = [t for t in trials if interrupted(t) and t.number not in rerun]
    running = [t for t in trials if t.state == TrialState.RUNNING]
    return Plan(len(counted), reruns, running)


def fail_lost_trials(study: optuna.Study, storage: RDBStorage, me: Worker) -> list[int]:
    """Fail the running trials whose worker is gone: a process of this machine that has
    ended (at once), or any worker whose heartbeat is older than GRACE_SECONDS. They are
    then re-run by `plan_trials`. Returns the numbers of those failed here."""
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if me.gone(t.user_attrs.get(WORKER)):
            try:
                storage.set_trial_user_attr(t._trial_id, INTERRUPTED, "its sweep ended in the middle of it")
                storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            except RuntimeError:  # another worker got there first: the trial is finished already
                continue
            failed.append(t.number)
        elif t.user_attrs.get(WORKER) == me.as_dict():  # ours: fresh, even after this machine slept
            storage.record_heartbeat(t._trial_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)
    return failed


@contextlib.contextmanager
def heartbeats(storage: RDBStorage, trial_id: int):
    """Record the trial's heartbeat every HEARTBEAT_SECONDS while the block runs (its run,
    and pushing its experiment), so no other worker takes it for lost."""
    done = threading.Event()

    def beat() -> None:
        while not done.is_set():
            with contextlib.suppress(Exception):  # a storage that hiccups: the next beat may pass
                storage.record_heartbeat(trial_id)
            done.wait(HEARTBEAT_SECONDS)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def rerun_attrs(t: FrozenTrial) -> dict:
    """The user attributes a re-run of `t` starts with."""
    attrs = {RERUN_OF: t.number}
    if t.user_attrs.get(DEFAULTS):
        attrs[DEFAULTS] = True
    return attrs
