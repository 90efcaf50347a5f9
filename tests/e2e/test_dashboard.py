"""optuna-dashboard, which docs/sweep.md recommends for watching a sweep, draws a real sweep's trials.

A study is made as fmnist-sweep makes one (fmnist.sweep.study's storage, lock and
open_study, sweep.yaml's space, the sweep's trial attributes), with four complete trials,
a pruned one and a failed one; optuna-dashboard (pinned in the test extra) serves it on
127.0.0.1, and the study's page is rendered in headless Chromium (Debian's package, the
flags of test_plots.py). The history chart must draw a point for each trial with a value,
in the order of their values, and the page must name the best trial and every trial with
intermediate values. The server is stopped at the end, whatever happens.

Skipped without chromium or optuna-dashboard, except in CI (CI=true), where it fails.
"""

from __future__ import annotations

import html
import re
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pytest
import yaml

from helpers import ROOT
from helpers.tools import CHROMIUM_HINT, PIP_HINT, need, need_tool

pytestmark = pytest.mark.e2e

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1400,2400")
# The complete trials' validation accuracies; then a trial pruned after epoch 1 and a failed one.
VALUES = [0.8924, 0.8706, 0.9031, 0.8857]
PRUNED_AT = 0.8012


@pytest.fixture
def chromium() -> str:
    """Debian's package, or the Chrome that GitHub's Ubuntu runners come with."""
    return need_tool("chromium", CHROMIUM_HINT, "chromium-browser", "google-chrome")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_sweep_study(path: Path) -> str:
    """A study in a SQLite file as fmnist-sweep leaves it; its storage URL."""
    import optuna
    from optuna.trial import TrialState

    from fmnist.sweep.search_space import load_space, parse_fixed
    from fmnist.sweep.study import EXPERIMENT, FAILURE, LOG, WORKER, StudyLock, Worker, open_storage, open_study

    url = f"sqlite:///{path}"
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    fixed = parse_fixed(["train.epochs=3"], base)
    config = load_space(ROOT / "sweep.yaml", base, fixed)
    storage = open_storage(url)
    shared = {"baseline": "0" * 40, "space": config.as_dict(), "fixed": fixed,
              "objective": "maximise best_val_acc (validation accuracy)"}
    sampler = optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=config.startup_trials, constant_liar=True)
    me = Worker.me()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's notes on heartbeats outside Study.optimize, as the sweep's
        study, _ = open_study(storage, "sweep", sampler, None, StudyLock(storage, url, "sweep"), shared)

        def start():
            trial = study.ask(config.distributions)
            name = f"sweep-{trial.number}"
            trial.set_user_attr(WORKER, me.as_dict())
            trial.set_user_attr(EXPERIMENT, name)
            trial.set_user_attr(LOG, f"{me.host}:reports/sweep/sweep/logs/{name}.log")
            return trial

        for value in VALUES:
            trial = start()
            for epoch, acc in enumerate((value - 0.03, value - 0.01, value), start=1):
                trial.report(acc, epoch)
            for attr, v in (("seconds", 95.0), ("best_val_acc", value), ("epochs", 3), ("best_epoch", 3),
                            ("test_acc", round(value + 0.011, 4))):
                trial.set_user_attr(attr, v)
            study.tell(trial, value)
        trial = start()
        trial.report(PRUNED_AT, 1)
        trial.set_user_attr("pruned_after_epoch", 1)
        study.tell(trial, state=TrialState.PRUNED)
        trial = start()
        trial.set_user_attr(FAILURE, "error: train.lr: got nan, expected a finite number > 0 and <= 10")
        study.tell(trial, state=TrialState.FAIL)
    return url


@pytest.fixture
def dashboard(tmp_path):
    """optuna-dashboard on 127.0.0.1 (a free port) over a sweep's study: (base URL, study id, its log)."""
    executable = Path(sys.executable).parent / "optuna-dashboard"
    need(executable.is_file(), f"optuna-dashboard beside {sys.executable}", PIP_HINT)
    import optuna

    url = make_sweep_study(tmp_path / "optuna.db")
    study_id = optuna.storages.RDBStorage(url).get_study_id_from_name("sweep")
    log = tmp_path / "dashboard.log"
    for _ in range(3):  # another process may take the free port first
        port = free_port()
        with log.open("w") as out:
            proc = subprocess.Popen([str(executable), "--host", "127.0.0.1", "--port", str(port),
                                     "--server", "wsgiref", url], stdout=out, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/api/studies", timeout=5) as answer:  # noqa: S310 - our server
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        if proc.poll() is None:
            break
    try:
        assert proc.poll() is None, log.read_text()[-2000:]
        yield base, study_id, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def render(executable: str, url: str, profile: Path) -> str:
    """The DOM of `url` once its scripts have run and its requests have been answered."""
    # Virtual time runs only while no request is pending: 30 s of it is the page's fetches and
    # drawing with plenty to spare, however slow the machine.
    proc = subprocess.run([executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=30000",
                           "--dump-dom", url], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and "</html>" in proc.stdout, proc.stderr[-2000:]
    return proc.stdout


def text_of(dom: str) -> str:
    """The page's words, tags and scripts left out."""
    words = re.sub(r"<[^>]+>", " ", re.sub(r"<(style|script)\b.*?</\1>", " ", dom, flags=re.S))
    return " ".join(html.unescape(words).split())


def test_the_dashboard_draws_a_sweeps_trials(chromium, dashboard, tmp_path):
    base, study_id, log = dashboard
    dom = render(chromium, f"{base}/dashboard/studies/{study_id}", tmp_path / "profile")
    text = text_of(dom)

    # The history chart (a Plotly div): one point per trial with a value, by trial number
    # (x grows), the higher the value the higher the point (SVG's y shrinks).
    start = dom.index(">", dom.index('id="plot-history"'))  # from the end of its tag to the next chart's
    history = dom[start:dom.index("js-plotly-plot", start)]
    points = [tuple(map(float, xy)) for xy in re.findall(
        r'<path[^>]*class="point"[^>]*transform="translate\(([\d.]+),([\d.]+)\)"', history)]
    values = [*VALUES, PRUNED_AT]
    assert len(points) == len(values), (points, text[:3000])
    assert [x for x, _ in points] == sorted(x for x, _ in points), points
    assert sorted(range(len(points)), key=lambda i: points[i][1]) == sorted(range(len(values)),
                                                                            key=lambda i: -values[i]), points

    best = max(range(len(VALUES)), key=VALUES.__getitem__)
    assert f"Best Trial (number={best}) {VALUES[best]}" in text, text[:3000]
    # The intermediate values chart names every trial that reported an epoch (the failed one didn't).
    assert re.findall(r"trial #\d+", text) == [f"trial #{n}" for n in range(len(values))], text[:3000]
    # The timeline colours the trials by state.
    assert {"Complete", "Pruned", "Fail"} <= set(text.split()), text[:3000]
    served = log.read_text()
    assert re.search(rf'"GET /api/studies/{study_id}\b[^"]*" 200', served), served[-2000:]
    assert not re.search(r'" [45]\d\d ', served), served[-2000:]
