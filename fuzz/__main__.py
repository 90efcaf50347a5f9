"""python -m fuzz: fuzz the readers with atheris (libFuzzer), or replay a corpus through the oracle.

    python -m fuzz                                   # every target, 60 s each
    python -m fuzz picture params --seconds 300      # these two, 5 minutes each, one after the other
    python -m fuzz model -- -use_value_profile=1     # what follows -- goes to libFuzzer as it is
    python -m fuzz --replay                          # every committed corpus file through the oracle
    python -m fuzz model --replay crash-1a2b...      # one input: the traceback of what it breaks
    python -m fuzz --list

Each target runs in a process of its own, forked from this one once the readers are
imported and their modules instrumented (so torch is imported once), one at a time.
libFuzzer starts from the corpus earlier runs grew (WORKDIR/<target>/corpus, where it
adds what it finds) and the committed seeds (fuzz/corpus/<target>/, never written),
with these flags: -max_total_time (--seconds), -rss_limit_mb and -timeout (the target's,
or --rss-limit-mb, --timeout), -artifact_prefix=WORKDIR/<target>/artifacts/ (a crash,
timeout or out-of-memory input is saved there) and -dict (the target's tokens).
WORKDIR is outside the repository: $TMPDIR/fmnist-fuzz-<hash of the checkout> unless
--workdir says otherwise. Exit code: 0 when no input broke the rule, 1 otherwise.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import hashlib
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
import types
import warnings
from pathlib import Path

from fuzz.oracle import Broken, check
from fuzz.targets import ROOT, TARGETS, Target

DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / f"fmnist-fuzz-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:8]}"


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.splitlines()[0],
                                     epilog="arguments after -- go to libFuzzer (e.g. -- -use_value_profile=1)")
    parser.add_argument("targets", nargs="*", metavar="TARGET", help=f"{', '.join(TARGETS)} or all (default: all)")
    parser.add_argument("--seconds", type=int, default=60, help="fuzzing time of each target (default 60)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help=f"where corpora grow and crashes are saved (default {DEFAULT_WORKDIR})")
    parser.add_argument("--rss-limit-mb", type=int, help="memory limit of the process (default: the target's)")
    parser.add_argument("--timeout", type=int, help="seconds an input may take (default: the target's)")
    parser.add_argument("--fresh", action="store_true",
                        help="start from the seeds alone: forget what earlier runs found")
    parser.add_argument("--replay", nargs="*", type=Path, metavar="FILE",
                        help="no fuzzing: run FILEs (default: the committed corpus) through the oracle")
    parser.add_argument("--list", action="store_true", help="list the targets")
    args = parser.parse_args(argv)
    names = [name for name in args.targets if name != "all"] or list(TARGETS)
    unknown = [name for name in names if name not in TARGETS]
    if unknown:
        parser.error(f"unknown target {unknown[0]!r}; the targets: {', '.join(TARGETS)}")
    args.targets = [TARGETS[name] for name in names]
    if args.seconds < 1:
        parser.error("--seconds: at least 1")
    return args, extra


# --- replaying: no atheris needed ------------------------------------------------------

def corpus_files(target: Target) -> list[Path]:
    return sorted(path for path in target.seeds.iterdir() if path.is_file()) if target.seeds.is_dir() else []


def replay(target: Target, files: list[Path], folder: Path) -> tuple[dict[str, int], list[str]]:
    """Every file through the oracle: ({"result": n, "error": n}, the problems found).

    A seed named valid-* must give a result: an error there means the seeds no longer
    match the readers (re-create them: python -m fuzz.seeds)."""
    counts, problems = {"result": 0, "error": 0}, []
    for path in files:
        try:
            outcome = check(target, path.read_bytes(), folder)
        except Broken as exc:
            cause = "".join(traceback.format_exception(exc.__cause__)) if exc.__cause__ else ""
            problems.append(f"{path}: {exc}\n{cause}")
            continue
        counts[outcome] += 1
        if outcome == "error" and path.name.startswith("valid-"):
            problems.append(f"{path}: a valid seed gives an error; re-create the seeds with `python -m fuzz.seeds`")
    return counts, problems


def run_replay(args: argparse.Namespace) -> int:
    failed = False
    with tempfile.TemporaryDirectory(prefix="fmnist-fuzz-replay-") as tmp:
        for target in args.targets:
            files = args.replay or corpus_files(target)
            counts, problems = replay(target, files, Path(tmp))
            print(f"{target.name}: {len(files)} files, {counts['result']} results, {counts['error']} errors"
                  + (f", {len(problems)} broke the rule" if problems else ""), flush=True)
            for problem in problems:
                print(problem, file=sys.stderr)
            failed |= bool(problems)
    return 1 if failed else 0


# --- fuzzing --------------------------------------------------------------------------

def instrument(modules: set[str]) -> int:
    """Add atheris's coverage and comparison tracing to every function of these modules and
    their submodules (already imported); the number of functions."""
    import atheris

    def wanted(name: str | None) -> bool:
        return bool(name) and any(name == m or name.startswith(m + ".") for m in modules) and name in sys.modules

    count, skipped = 0, 0
    with warnings.catch_warnings():  # looking at every object's __module__ wakes deprecation warnings
        warnings.simplefilter("ignore")
        functions = [obj for obj in gc.get_objects()
                     if isinstance(obj, types.FunctionType) and wanted(getattr(obj, "__module__", None))]
    for obj in functions:
        try:
            atheris.instrument_func(obj)
            count += 1
        except Exception:  # noqa: BLE001 - a function atheris can't patch is left as it is
            skipped += 1
    return count


def dictionary(target: Target, path: Path) -> Path | None:
    """The target's tokens in libFuzzer's dictionary format (one quoted, escaped token a line)."""
    words = target.words()
    if not words:
        return None
    path.write_text("".join('"' + "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\x{b:02x}" for b in w)
                            + '"\n' for w in dict.fromkeys(words)))
    return path


_STAT = re.compile(r"stat::(\w+):\s+(\d+)")
_PROGRESS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/.*?exec/s: (\d+) rss: (\d+)Mb", re.M)


def summary(log: str) -> dict[str, int]:
    """libFuzzer's final stats (-print_final_stats), or what its last progress line says."""
    stats = {}
    progress = _PROGRESS.findall(log)
    if progress:
        names = ("number_of_executed_units", "cov", "ft", "corpus", "average_exec_per_sec", "peak_rss_mb")
        stats.update(zip(names, map(int, progress[-1]), strict=True))
    stats.update({name: int(value) for name, value in _STAT.findall(log)})
    return stats


def fuzz_target(target: Target, args: argparse.Namespace, extra: list[str]) -> bool:
    """Fuzz one target in a forked process; print what it did; True when nothing broke the rule."""
    import atheris

    home = args.workdir / target.name
    if args.fresh:
        shutil.rmtree(home / "corpus", ignore_errors=True)
    for sub in ("corpus", "artifacts", "input"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    before = set((home / "artifacts").iterdir())
    log = home / "fuzz.log"
    words = dictionary(target, home / "words.dict")
    flags = [f"-max_total_time={args.seconds}", f"-rss_limit_mb={args.rss_limit_mb or target.rss_limit_mb}",
             f"-timeout={args.timeout or target.timeout}", f"-artifact_prefix={home / 'artifacts'}/",
             "-print_final_stats=1", *([f"-dict={words}"] if words else []), *extra]
    print(f"{target.name}: fuzzing for {args.seconds} s ({' '.join(flags[:3])}); log {log}", flush=True)
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: libFuzzer's output to the log
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        folder = home / "input"

        def one_input(data: bytes) -> None:
            try:
                check(target, data, folder)
            except Broken:  # the whole chain: what the reader raised, where
                traceback.print_exc()
                sys.stderr.flush()
                raise

        try:
            atheris.Setup([f"fuzz-{target.name}", *flags, str(home / "corpus"), str(target.seeds)], one_input)
            atheris.Fuzz()  # exits when the time is up
        finally:
            # An input broke the rule (atheris raised it again here): C's exit() runs libFuzzer's
            # handler, which saves the input; the child never returns into the parent's code.
            sys.stdout.flush()
            sys.stderr.flush()
            ctypes.CDLL(None).exit(1)
    try:
        _, status = os.waitpid(pid, 0)
    except KeyboardInterrupt:
        _, status = os.waitpid(pid, 0)  # the child got the Ctrl-C too, and prints its stats
    code = os.waitstatus_to_exitcode(status)
    text = log.read_text(errors="replace")
    stats = summary(text)
    runs, seconds = stats.get("number_of_executed_units", 0), time.monotonic() - started
    print(f"{target.name}: {runs:,} runs, {stats.get('average_exec_per_sec', 0):,} exec/s, "
          f"cov {stats.get('cov', '?')} ft {stats.get('ft', '?')}, corpus {stats.get('corpus', '?')} "
          f"({stats.get('new_units_added', 0)} new), slowest input {stats.get('slowest_unit_time_sec', '?')} s, "
          f"peak rss {stats.get('peak_rss_mb', '?')} MB, {seconds:.0f} s in all", flush=True)
    found = sorted(set((home / "artifacts").iterdir()) - before)
    if code == 0 and not found:
        return True
    kind = next((line for line in text.splitlines() if "ERROR: libFuzzer" in line or "Uncaught Python" in line
                 or "Broken:" in line), f"exit code {code}")
    print(f"{target.name}: BROKE THE RULE: {kind.strip()}", flush=True)
    for path in found:
        print(f"  input saved as {path}; replay it: python -m fuzz {target.name} --replay {path}", flush=True)
    print("  the end of the log:\n    " + "\n    ".join(text.splitlines()[-40:]), flush=True)
    return False


def run_fuzz(args: argparse.Namespace, extra: list[str]) -> int:
    try:
        import atheris  # noqa: F401 - Linux only (requirements/test.txt)
    except ImportError:
        print("atheris is not installed (the test extra installs it on Linux); "
              "python -m fuzz --replay needs no atheris", file=sys.stderr)
        return 2
    print(f"work folder: {args.workdir}", flush=True)
    # Import each reader and build its templates by running the seeds once, then instrument.
    with tempfile.TemporaryDirectory(prefix="fmnist-fuzz-warm-") as tmp:
        for target in args.targets:
            replay(target, corpus_files(target), Path(tmp))
    modules = {"fmnist", *(m for target in args.targets for m in target.instrument)}
    print(f"instrumented {instrument(modules):,} functions of {', '.join(sorted(modules))}", flush=True)
    ok = [fuzz_target(target, args, extra) for target in args.targets]
    return 0 if all(ok) else 1


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        for target in TARGETS.values():
            print(f"{target.name:<11} {target.what}")
        return 0
    import torch

    torch.set_num_threads(1)  # one core: the machine is shared, and a forked child must not inherit OpenMP threads
    if args.replay is not None:
        return run_replay(args)
    return run_fuzz(args, extra)


if __name__ == "__main__":
    sys.exit(main())
