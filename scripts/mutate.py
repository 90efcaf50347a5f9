"""`make mutate`: mutation testing (mutmut) of the modules that decide what a run produces.

    make mutate                                        # the six modules, one after the other
    make mutate MUTATE_MODULES="classifier metrics"    # some of them
    python scripts/mutate.py --max-children 1 raw      # the same, without make

Each module is mutated alone and its mutants are run against the module's own unit tests
(MODULES: its mirrored test file), never the e2e suite: a mutant counts as killed only when
a test of that module fails on it. For each mutant mutmut runs those of the tests that call
the mutated function. `mutants/` (mutmut's copy of the project and its cache) is rebuilt
for every module, so no verdict outlives an edit of a test. Per module this writes
reports/mutate/<module>.json (the counts and the survivors) and <module>.md (each survivor's
diff), then prints the table docs/testing.md shows, and fails if a module kills fewer than
--min-killed percent of its mutants or a hand-made mutant (HAND_MUTANTS) survives.

mutmut mutates the bodies of functions and methods (not module constants, not functions
under a decorator other than @classmethod/@staticmethod) one change at a time: numbers
n -> n + 1, strings "x" -> "XXxXX", operators and comparisons swapped, arguments dropped or
None, `and`/`or`, `True`/`False`, `break`/`continue`, assignments to None.
`[tool.mutmut]` in pyproject.toml holds the rest of its configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module: (the file mutated, its unit tests). The order is the one they were done in.
MODULES = {
    "classifier": ("fmnist/model/classifier.py", ["tests/unit/model/test_classifier.py"]),
    "metrics": ("fmnist/metrics.py", ["tests/unit/test_metrics.py"]),
    "splits": ("fmnist/splits.py", ["tests/unit/test_splits.py"]),
    "model_file": ("fmnist/model/model_file.py", ["tests/unit/model/test_model_file.py"]),
    "raw": ("fmnist/raw.py", ["tests/unit/test_raw.py", "tests/unit/test_raw_missing.py"]),
    "loop": ("fmnist/training/loop.py", ["tests/unit/training/test_loop.py"]),
}

# Tests left out of the mutation runs: a test that runs a stage as a process can't run a mutant there
# (mutmut's code in the mutated module looks for pyproject.toml in the stage's working folder).
DESELECT = {
    "raw": [("tests/unit/test_raw_missing.py::"
             "test_the_download_stage_refuses_a_named_pipe_in_fashion_mnist_dir_and_writes_nothing")],
}

# Mutants mutmut does not make but that must die, written by hand: (what, the code, the mutant).
# The code must occur exactly once in the module; the module's tests must fail on the mutant.
HAND_MUTANTS = {
    "classifier": [("mirroring upside down instead of left-right", "x.flip(3)", "x.flip(2)")],
    "loop": [("keeping the last epoch instead of the best",
              'if scored.accuracy >= progress.best["val_acc"]:', "if True:")],
}

# mutmut's verdicts, as docs/testing.md's table counts them.
COLUMNS = ("killed", "survived", "no tests", "timeout", "suspicious")


def run_mutmut(module: str, max_children: int) -> None:
    """In a process of its own: mutmut run, narrowed to `module` and its tests."""
    from mutmut.configuration import config

    source, tests = MODULES[module]
    cfg = config()  # [tool.mutmut], read once and cached: what the runs below use
    cfg.only_mutate = [source]
    cfg.pytest_add_cli_args_test_selection = [*tests, *(f"--deselect={test}" for test in DESELECT.get(module, []))]
    from mutmut.__main__ import cli

    cli.main(["run", "--max-children", str(max_children)], standalone_mode=False)


def verdicts(module: str) -> dict:
    """The counts of mutmut's verdicts on `module` and each mutant that was not killed, with its diff."""
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code

    source, tests = MODULES[module]
    data = SourceFileMutationData(path=source)
    data.load()
    counts = dict.fromkeys(COLUMNS, 0)
    survivors = {}
    for name, code in sorted(data.exit_code_by_key.items(), key=lambda item: mutant_order(item[0])):
        status = status_by_exit_code[code]
        status = {"caught by type check": "killed", "segfault": "suspicious",
                  "not checked": "suspicious", "skipped": "survived"}.get(status, status)
        counts[status] += 1
        if status != "killed":
            survivors[name] = {"status": status, "diff": get_diff_for_mutant(name, path=source)}
    total = sum(counts.values())
    return {"module": source, "tests": tests, "mutants": total, **counts,
            "killed_percent": round(100 * counts["killed"] / total, 1) if total else 0.0,
            "survivors": survivors}


def mutant_order(name: str) -> tuple[str, int]:
    function, _, number = name.rpartition("__mutmut_")
    return function, int(number)


def hand_mutants(module: str) -> list[str]:
    """The hand-made mutants of `module` its tests let live (each tried in mutants/, then undone)."""
    source, tests = MODULES[module]
    original = (ROOT / source).read_text()
    alive = []
    env = {**os.environ, "PYTHONPATH": str(ROOT / "mutants"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    target = ROOT / "mutants" / source
    mutated_copy = target.read_text()
    try:
        for what, code, mutant in HAND_MUTANTS.get(module, []):
            if original.count(code) != 1:
                raise SystemExit(f"scripts/mutate.py: hand-made mutant {what!r}: {code!r} occurs "
                                 f"{original.count(code)} times in {source}, not once; update HAND_MUTANTS")
            target.write_text(original.replace(code, mutant))
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-n", "0", "-p", "no:cacheprovider",
                                   *tests, *(f"--deselect={test}" for test in DESELECT.get(module, []))],
                                  cwd=ROOT / "mutants", env=env, capture_output=True, text=True)
            killed = proc.returncode == 1
            if proc.returncode not in (0, 1):
                raise SystemExit(f"scripts/mutate.py: pytest failed to run on the hand-made mutant {what!r}:\n"
                                 f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
            print(f"hand-made mutant of {module}, {what}: {'killed' if killed else 'SURVIVED'}")
            if not killed:
                alive.append(what)
    finally:
        target.write_text(mutated_copy)
    return alive


def table(results: list[dict], command: str) -> str:
    lines = ["| module | mutants | killed | survived | no tests | timeout/suspicious | % killed | command |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        name = next(m for m, (source, _) in MODULES.items() if source == r["module"])
        lines.append(f"| `{r['module']}` | {r['mutants']} | {r['killed']} | {r['survived']} | {r['no tests']} | "
                     f"{r['timeout'] + r['suspicious']} | {r['killed_percent']:.1f}% | "
                     f"`{command} MUTATE_MODULES={name}` |")
    return "\n".join(lines)


def write_report(out: Path, module: str, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{module}.json").write_text(json.dumps(result, indent=2) + "\n")
    parts = [f"# Mutants of {result['module']} not killed by {', '.join(result['tests'])}\n"]
    for name, survivor in result["survivors"].items():
        parts.append(f"## {name} ({survivor['status']})\n\n```diff\n{survivor['diff']}\n```\n")
    (out / f"{module}.md").write_text("\n".join(parts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE", help=f"of {', '.join(MODULES)} (default: all)")
    parser.add_argument("--max-children", type=int, default=1, help="mutants tested at once (default 1)")
    parser.add_argument("--min-killed", type=float, default=85.0, help="fail below this percent killed (default 85)")
    parser.add_argument("--out", type=Path, default=Path("reports/mutate"), help="where the results go")
    parser.add_argument("--table", action="store_true", help="print the table of the results in --out; run nothing")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process that runs mutmut on one module
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    if args.one:
        run_mutmut(args.one, args.max_children)
        write_report(args.out, args.one, verdicts(args.one))
        return 0
    if args.table:
        found = [args.out / f"{m}.json" for m in args.modules or MODULES if (args.out / f"{m}.json").exists()]
        print(table([json.loads(path.read_text()) for path in found], "make mutate"))
        return 0

    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module {', '.join(unknown)}; the modules are {', '.join(MODULES)}")
    modules = args.modules or list(MODULES)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}  # a thread a child
    results, failures = [], []
    for module in modules:
        print(f"=== {module}: {MODULES[module][0]} against {', '.join(MODULES[module][1])}", flush=True)
        shutil.rmtree(ROOT / "mutants", ignore_errors=True)
        subprocess.run([sys.executable, __file__, "--one", module, "--max-children", str(args.max_children),
                        "--out", str(args.out)], env=env, check=True)
        result = json.loads((args.out / f"{module}.json").read_text())
        results.append(result)
        if result["killed_percent"] < args.min_killed:
            failures.append(f"{module}: {result['killed_percent']:.1f}% killed, fewer than {args.min_killed:g}%")
        failures += [f"{module}: the hand-made mutant {what!r} survived" for what in hand_mutants(module)]
        print(f"{module}: {result['killed']} of {result['mutants']} killed; not killed: "
              f"{', '.join(result['survivors']) or 'none'} (diffs in {args.out / (module + '.md')})", flush=True)
    print()
    print(table(results, "make mutate"))
    for failure in failures:
        print(f"make mutate: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
