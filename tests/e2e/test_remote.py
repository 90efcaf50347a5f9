"""DVC remotes: the default local remote of .dvc/config, and an S3 remote for real.

The S3 remote is moto's S3-compatible server, run by the test on 127.0.0.1 (a free port)
and stopped afterwards. Each test reproduces the tiny pipeline in a temporary git repo,
pushes its outputs, clones the repo afresh, pulls there and checks that the clone's
outputs are byte for byte the original's. Nothing talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from helpers.repos import Repo, make_repo, run
from helpers.tools import PIP_HINT, need_module

BUCKET = "fmnist"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
MODEL = "models/model.pt"
# Everything the pipeline writes (DVC-cached or not) lives in these folders.
OUTPUT_FOLDERS = ("data", "models", "metrics")


def isolated(env: dict, tmp: Path) -> dict:
    """`env` without this machine's AWS settings: no profile, no config files, no instance
    metadata service (169.254.169.254) to ask for credentials, no proxy for 127.0.0.1."""
    env = {k: v for k, v in env.items() if not k.startswith("AWS_") or k == "AWS_CA_BUNDLE"}
    env.update({
        "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        # DVC's per-repo state (otherwise under /var/tmp/dvc) stays in the test's folder.
        "DVC_SITE_CACHE_DIR": str(tmp / "dvc-site-cache"),
    })
    return env


def setup_repo(tmp_path: Path, raw: Path) -> Repo:
    repo = make_repo(tmp_path / "repo", raw)
    repo.env = isolated(repo.env, tmp_path)
    return repo


def fresh_clone(repo: Repo, dest: Path, **env: str) -> Repo:
    """A `git clone` of `repo`: what git holds, no DVC cache, no .dvc/config.local."""
    run(["git", "clone", "-q", str(repo.path), str(dest)], cwd=dest.parent, env=repo.env)
    clone = Repo(dest, {**repo.env, "PYTHONPATH": str(dest), **env})
    assert not (dest / MODEL).exists() and not (dest / ".dvc" / "cache").exists()
    assert not (dest / ".dvc" / "config.local").exists()
    return clone


def output_files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for folder in OUTPUT_FOLDERS for path in sorted((root / folder).rglob("*")) if path.is_file()
    }


def assert_same_outputs(original: Repo, clone: Repo) -> None:
    assert json.loads(clone.dvc("status", "--json").stdout) == {}
    assert (clone.path / MODEL).read_bytes() == (original.path / MODEL).read_bytes()
    want, got = output_files(original.path), output_files(clone.path)
    assert MODEL in want and sorted(got) == sorted(want)
    assert [name for name in want if got[name] != want[name]] == []


def repro_and_commit(repo: Repo) -> None:
    repo.dvc("repro")
    repo.commit("results")
    assert repo.run("git", "status", "--porcelain").stdout == ""


def test_default_local_remote_push_then_pull_in_a_fresh_clone(tmp_path, tiny_raw):
    repo = setup_repo(tmp_path, tiny_raw)
    # .dvc/config's default remote is a folder next to the repo's folder, outside its work tree.
    store = tmp_path / "fmnist-dvc-remote"
    assert repo.dvc("remote", "default").stdout.strip() == "local"
    repo.env["COLUMNS"] = "1000"  # `dvc remote list` cuts long paths to the terminal's width
    name, url, *_ = repo.dvc("remote", "list").stdout.split()
    assert name == "local" and Path(url) == store, url
    assert not store.exists()

    repro_and_commit(repo)
    repo.dvc("push")  # no arguments: the default remote
    assert list((store / "files" / "md5").rglob("*")), "nothing was pushed"
    assert json.loads(repo.dvc("status", "--cloud", "--json").stdout) == {}

    clone = fresh_clone(repo, tmp_path / "clone")  # a sibling: the same default remote
    clone.dvc("pull")
    assert_same_outputs(repo, clone)


@pytest.fixture
def s3_endpoint():
    """moto's S3 server on 127.0.0.1 and a free port, for the duration of one test."""
    need_module("dvc_s3", PIP_HINT)  # the S3 remote
    moto_server = need_module("moto.server", PIP_HINT)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    # start() waits for the server without a time limit: bound the wait here.
    starter = threading.Thread(target=server.start, daemon=True)
    starter.start()
    starter.join(timeout=30)
    if starter.is_alive():
        pytest.fail("moto's S3 server did not start within 30 s")
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def test_s3_remote_push_then_pull_in_a_fresh_clone(tmp_path, tiny_raw, s3_endpoint):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")  # noqa: S106 - moto's
    s3.create_bucket(Bucket=BUCKET)
    repo = setup_repo(tmp_path, tiny_raw)
    repro_and_commit(repo)

    # The set-up of docs/remotes.md: the remote in .dvc/config (committed), credentials in
    # .dvc/config.local (git-ignored) here, and from the environment in the clone.
    repo.dvc("remote", "add", "-d", "team", f"s3://{BUCKET}/dvc-store")
    repo.dvc("remote", "modify", "team", "endpointurl", s3_endpoint)
    repo.dvc("remote", "modify", "--local", "team", "access_key_id", "testing")
    repo.dvc("remote", "modify", "--local", "team", "secret_access_key", "testing")
    repo.commit("S3 remote")
    assert repo.run("git", "ls-files", ".dvc").stdout.split() == [".dvc/.gitignore", ".dvc/config"]
    committed = repo.run("git", "show", "HEAD:.dvc/config").stdout
    assert s3_endpoint in committed and "testing" not in committed

    repo.dvc("push")
    keys = [obj["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for obj in page.get("Contents", [])]
    assert keys and all(key.startswith("dvc-store/files/md5/") for key in keys), keys
    assert json.loads(repo.dvc("status", "--cloud", "--json").stdout) == {}
    assert not (tmp_path / "fmnist-dvc-remote").exists()  # the S3 remote replaced the default

    clone = fresh_clone(repo, tmp_path / "clone", **CREDENTIALS)
    assert clone.dvc("remote", "default").stdout.strip() == "team"
    clone.dvc("pull")
    assert_same_outputs(repo, clone)
