"""The rule every target checks: a result, or the project's error in one line; anything else is a crash.

    outcome = check(TARGETS["params"], data, folder)   # "result" or "error"; raises Broken otherwise

`check` writes the input where the target's reader expects a file and calls the reader:

- it returns: the target's own check of the result may still refuse it (a picture must
  come out as uint8 28x28 pixels, a prepared split hold at most 70,000 images, ...);
- it raises fmnist's PipelineError (DataError, ParamError, ...): the message must be one
  printable line of at most MAX_LINE characters; the only exception is the form
  `params.yaml has N problems:` followed by N lines, one a problem, which
  docs/errors.md documents;
- it raises anything else: a bug (the entry points would print "unexpected ... (this is
  a bug)").

Every breach raises Broken, which atheris reports as a crash with the input saved; time
and memory are bounded by libFuzzer itself (-timeout, -rss_limit_mb; fuzz/__main__.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from fmnist.core.errors import PipelineError

if TYPE_CHECKING:
    from fuzz.targets import Target

# A message longer than this is not one line on any terminal: a reader that quotes
# unbounded content from a file (a key, a value, a decoder's words) breaks the rule.
MAX_LINE = 1000
_PROBLEMS = re.compile(r".* has (\d+) problems:")


class Broken(Exception):
    """An input broke the rule (the message says how): a crash for the fuzzer, a failure for a test."""


def line_problem(line: str) -> str | None:
    if not line.strip():
        return "is empty"
    if not line.isprintable():
        return f"holds unprintable characters ({line[:200]!r})"
    if len(line) > MAX_LINE:
        return f"is {len(line):,} characters long, more than {MAX_LINE}"
    return None


def message_problem(message: str) -> str | None:
    """Why `message` is not the project's one-line error, or None when it is."""
    lines = message.split("\n")
    if len(lines) > 1:
        head = _PROBLEMS.fullmatch(lines[0])
        if not (head and int(head[1]) == len(lines) - 1 >= 2 and all(line.startswith("  ") for line in lines[1:])):
            return f"spans {len(lines)} lines"
    for line in lines:
        problem = line_problem(line)
        if problem:
            return problem
    return None


def check(target: Target, data: bytes, folder: Path) -> str:
    """Run `target`'s reader on `data` (written to `folder`): "result", or "error" (the reader
    refused the input as it should: an error in one line, or a result that says no, such as
    a checkpoint not resumed), or raise Broken."""
    path = folder / target.filename
    path.write_bytes(target.prepare(data))
    try:
        result = target.read(path)
    except Broken:
        raise
    except PipelineError as exc:
        problem = message_problem(str(exc))
        if problem:
            raise Broken(f"{target.name}: the message of {type(exc).__name__} {problem}: {str(exc)[:300]!r}") from exc
        return "error"
    except Exception as exc:  # what the oracle is for: any other exception is a bug
        text = " ".join(str(exc).split())[:300]
        raise Broken(f"{target.name}: {type(exc).__name__} is not the project's error "
                     f"(a fmnist PipelineError): {text}") from exc
    problem = target.result_problem(result) if target.result_problem else None
    if problem:
        raise Broken(f"{target.name}: the result {problem}")
    return "error" if target.refused(result) else "result"
