"""Compare the workspace's results with those of a git revision; write reports/compare.md.

    make compare BASE=main                     # or, in the activated .venv:
    python scripts/compare.py --base main      # from the repository's top folder

The report holds the params diff, test accuracy and loss (base, head, delta;
the numbers of `dvc metrics diff BASE`), per-class F1, the training curves of both
sides as Mermaid charts, the confusion-matrix cells that changed, and a one-line
verdict. It is the pull request's comment as it stands (.github/workflows/pull-request.yml
posts it unchanged). Beside it go the same pictures in full as PNGs: reports/curves.png
and reports/confusion.png. `--run-url` (make compare RUN_URL=...) links the CI run whose
artifact holds them.

The head is the workspace; run `dvc repro` first. BASE's results come from git
(metrics/eval.json) and the DVC cache (curves, confusion rows): when they are not there,
`dvc fetch -a` gets them from a DVC remote, or reproduce BASE.

Exits 1 when test accuracy falls by more than `compare.max_accuracy_drop` of the
workspace's params.yaml (the report is written first), or when something is missing;
either way with one line saying why.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from fmnist.core.errors import PipelineError, run
from fmnist.core.io import save_figure, write_text
from fmnist.params import load_params
from fmnist.serve.provenance import git, git_commit, pipeline_paths
from fmnist.serve.report import (
    CURVES,
    confusion_figure,
    confusion_matrix,
    curves_figure,
    metrics_table,
    per_class_f1_table,
    render_markdown,
    verdict,
)

# The pipeline's outputs it reads: dvc.yaml's `vars` (`live`: DVCLive's folder, curves in
# <live>/plots/metrics/<split>/<metric>.tsv).
OUTPUTS = ("eval", "per_class", "confusion", "live")
PICTURES = {"curves.png": "training curves", "confusion.png": "both confusion matrices"}
# The name of the workflow's artifact that holds reports/ (.github/workflows/pull-request.yml).
ARTIFACT = "compare-report"


def label(rev: str, sha: str) -> str:
    return rev if sha.startswith(rev) else f"{rev} = {sha[:7]}"


def reproduce_hint(rev: str) -> str:
    return (f"fetch them from the DVC remote with `dvc fetch -a` (or `git checkout {rev} && dvc pull`); "
            f"without a remote, reproduce the base: `git checkout {rev} && dvc repro` (if its results differ "
            f"from its committed dvc.lock, commit them on a branch and compare against that)")


def read_base(fs, path: str, rev: str, sha: str) -> str:
    """A file of BASE, from git or, for DVC outputs, the DVC cache (or remote)."""
    try:
        return fs.read_text(path)
    # DVC says "not in the cache" with several exception types (FileNotFoundError,
    # DataIndexDirError for a folder, remote errors); all mean the same thing here.
    except Exception as exc:  # noqa: BLE001
        raise PipelineError(f"{path} of the base ({label(rev, sha)}) is neither in git nor in the DVC cache "
                            f"({type(exc).__name__}: {exc}); {reproduce_hint(rev)}") from None


def read_head(path: str) -> str:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing in the workspace; run `dvc repro` (or `dvc pull`) first") from None


def read_results(read, paths: dict) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, pd.DataFrame]:
    """One side's training curves, confusion matrix and per-class table, each file read with `read(path)`."""
    curves = {name: pd.read_csv(io.StringIO(read(f"{paths['live']}/plots/metrics/{name}.tsv")), sep="\t")
              for name in CURVES}
    per_class = pd.read_csv(io.StringIO(read(paths["per_class"])))
    return curves, confusion_matrix(pd.read_csv(io.StringIO(read(paths["confusion"])))), per_class


def pictures_sentence(out: Path, run_url: str | None) -> str:
    """Where the PNGs are: beside the report, or in the artifact of the CI run `run_url`."""
    files = ", ".join(f"`{name}` ({caption})" for name, caption in PICTURES.items())
    if run_url:
        return f"The PNGs, {files}, are in the `{ARTIFACT}` artifact of [this workflow run]({run_url})."
    return f"The PNGs, {files}, are beside this report in `{out}/`."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="main", help="git revision to compare with (default: main)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="folder for compare.md and the PNGs")
    parser.add_argument("--run-url", help="URL of the CI run whose artifact holds the PNGs (named in the report)")
    args = parser.parse_args()
    paths = pipeline_paths(Path("."), *OUTPUTS)

    sha = git_commit(args.base, hint="name an existing branch, tag or commit, or fetch it first: git fetch origin; "
                                     "a CI checkout needs the full history, fetch-depth: 0")
    max_drop = load_params().compare.max_accuracy_drop  # the head's threshold

    # DVC's look-ups take seconds each: on a terminal, a bar says which one is running. Closed
    # (its line cleared) on the way out, an error's included, before anything else is printed.
    with tqdm(total=5, leave=False, disable=None,
              bar_format="make compare: {desc} (step {n_fmt}/{total_fmt}, {elapsed})") as bar:
        def step(what: str) -> None:  # the next of the five steps begins
            bar.set_description_str(what, refresh=False)
            bar.update()

        step("loading DVC")
        # Imported late: a bad --base or params.yaml is reported without waiting for DVC.
        from dvc.api import DVCFileSystem
        from dvc.repo import Repo

        repo = Repo(".")
        step("dvc params diff, dvc metrics diff")
        # The same calls as `dvc params diff BASE` and `dvc metrics diff BASE --all`.
        params_diff = repo.params.diff(a_rev=sha).get("diff", {}).get("params.yaml", {})
        eval_diff = repo.metrics.diff(a_rev=sha, all=True).get("diff", {}).get(paths["eval"], {})
        metrics = metrics_table(eval_diff)
        accuracy = metrics.set_index("key").loc["test_acc"]
        if pd.isna(accuracy["base"]):
            raise PipelineError(f"the base ({label(args.base, sha)}) has no committed results (no test accuracy in "
                                f"its {paths['eval']}); compare against a commit made after `dvc repro`, "
                                f"or reproduce the base: "
                                f"`git checkout {args.base} && dvc repro`")
        if pd.isna(accuracy["head"]):
            raise PipelineError(f"{paths['eval']}: missing in the workspace; run `dvc repro` first")

        step(f"the base's results ({label(args.base, sha)})")
        fs = DVCFileSystem(".", rev=sha)
        base_curves, base_confusion, base_per_class = read_results(
            lambda path: read_base(fs, path, args.base, sha), paths)
        head_curves, head_confusion, head_per_class = read_results(read_head, paths)

        step("dvc status")
        notes = []
        stale = repo.status()  # what `dvc status` lists: the workspace's results don't match its params/code
        if stale:
            notes.append(f"The workspace's results are out of date (`dvc status` lists {', '.join(sorted(stale))}); "
                         "run `dvc repro` before comparing.")
        dirty = git("status", "--porcelain", "--untracked-files=no")
        head = git("rev-parse", "--short", "HEAD")
        ok, line = verdict(accuracy["base"], accuracy["head"], max_drop)
        text = render_markdown(
            base_label=f"`{label(args.base, sha)}`",
            head_label=f"the workspace (`HEAD` = `{head}`{', with uncommitted changes' if dirty else ''})",
            ok=ok, verdict_line=line, params_diff=params_diff, metrics=metrics,
            per_class=per_class_f1_table(base_per_class, head_per_class),
            curves={"base": base_curves, "head": head_curves},
            confusion={"base": base_confusion, "head": head_confusion},
            pictures=pictures_sentence(args.out, args.run_url), notes=notes)

        step("the pictures")
        figures = {"curves.png": curves_figure({"base": base_curves, "head": head_curves}),
                   "confusion.png": confusion_figure({"base": base_confusion, "head": head_confusion})}
        for name, fig in figures.items():
            save_figure(args.out / name, fig)
        write_text(args.out / "compare.md", text)
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    print(f"wrote {args.out / 'compare.md'} and {', '.join(str(args.out / n) for n in figures)}")
    if not ok:
        raise PipelineError(f"{line} (see {args.out / 'compare.md'})")
    print(line)


if __name__ == "__main__":
    run(main)
