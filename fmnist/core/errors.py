"""The pipeline's expected failures, and how every entry point reports them.

    if __name__ == "__main__":
        run(main)     # one line on stderr and exit 1, never a traceback

A stage, script or command wrapped in `run` reports a PipelineError, or an OSError
(disk full, permission denied), as one line naming the file or param and exits 1;
Ctrl-C exits 130 and SIGTERM (what CI runners and schedulers send on cancel) 143,
after saying that outputs are whole or absent (they are written by atomic rename).
Anything else is a bug: one line too, and the traceback with FMNIST_DEBUG=1.
"""

from __future__ import annotations

import difflib
import os
import signal
import sys
from collections.abc import Callable


class PipelineError(Exception):
    """Base class: the message alone tells the user what is wrong and where."""


class DataError(PipelineError, ValueError):
    """A file the pipeline reads (raw or prepared data, a model, a checkpoint) is missing or damaged."""


class ParamError(PipelineError, ValueError):
    """params.yaml (or a -S override) holds a value the pipeline can't use."""


class OutputError(PipelineError, OSError):
    """An output could not be written (no space, file too large, read-only folder)."""


class TrainingDiverged(PipelineError, RuntimeError):
    """The training loss became NaN or infinite."""


class PeersLost(PipelineError, RuntimeError):
    """A process of a distributed run lost the others (one of them failed or was killed)."""


def flat(text: object, limit: int) -> str:
    """`text` on one line (every run of white space one blank), cut to `limit` characters:
    what an outside message (an exception's, a tool's stderr) may be in one of ours."""
    return " ".join(str(text).split())[:limit]

class _Enough(Exception):
    """A repr has grown past what a message shows."""


def _repr_upto(value: object, limit: int) -> str:
    """repr(value) as far as its first `limit` characters or a little more, however large
    the whole: lists and dicts from a file can share parts (YAML aliases, pickle's memo), so
    that a few lines of YAML make a repr of gigabytes; a part repr() can't write is <its type>."""
    parts, size = [], 0

    def put(text: str) -> None:
        nonlocal size
        parts.append(text)
        size += len(text)
        if size > limit:
            raise _Enough

    def walk(v: object, depth: int) -> None:
        if isinstance(v, (list, tuple, dict)) and depth > 20:
            put("...")  # nested deeper than any message shows (and maybe in itself)
        elif isinstance(v, dict):
            put("{" if type(v) is dict else f"{type(v).__name__}({{")
            for i, (key, item) in enumerate(v.items()):
                put(", " if i else "")
                walk(key, depth + 1)
                put(": ")
                walk(item, depth + 1)
            put("}" if type(v) is dict else "})")
        elif type(v) in (list, tuple):
            put("[" if type(v) is list else "(")
            for i, item in enumerate(v):
                put(", " if i else "")
                walk(item, depth + 1)
            put("]" if type(v) is list else ",)" if len(v) == 1 else ")")
        else:
            try:
                put(repr(v))
            except _Enough:
                raise
            except Exception:  # noqa: BLE001 - e.g. an int of a million digits (ValueError)
                put(f"<{type(v).__name__}>")

    try:
        walk(value, 0)
    except _Enough:
        pass
    return "".join(parts)


def shown(value: object, limit: int = 80) -> str:
    """repr(value) on one line and at most `limit` characters, for a message: a tensor or
    a long list found in a damaged file must not break the one-line rule."""
    text = printable(" ".join(_repr_upto(value, 2 * limit).split()))
    return text if len(text) <= limit else text[:limit - 3] + "..."


def did_you_mean(name: str, known: list[str]) -> str:
    """ " (did you mean 'x'?)" naming the known name closest to a mistyped `name`, or ""."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def reason(exc: BaseException) -> str:
    """What went wrong, in an OSError's own words (its strerror) where it has them."""
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__


def printable(text: str) -> str:
    """`text` with each character a terminal would act on (an escape sequence's ESC, a bell,
    a NUL) written as repr() writes it: a message may quote bytes of a damaged file."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def quoted(text: str, limit: int = 300) -> str:
    """Text from a file (a key, a name) for a message: one printable line, at most `limit` characters."""
    text = printable(" ".join(text.split()))
    return text if len(text) <= limit else text[:limit - 3] + "..."


def one_line(exc: BaseException, limit: int = 160) -> str:
    """The first sentence of an exception's message, on one printable line."""
    text = printable(" ".join(str(exc).split())) or type(exc).__name__
    first = text.split(". ")[0].rstrip(".")
    return first if len(first) <= limit else first[:limit - 3] + "..."


class Terminated(BaseException):
    """SIGTERM arrived; raised like KeyboardInterrupt so the same clean-up runs."""


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the clean-up
    raise Terminated()


def run(main: Callable[[], object]) -> None:
    """Run an entry point's main(); report failures in one line with the right exit code."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = main()
        sys.stdout.flush()  # here, not at exit, where a closed pipe would be a printed warning
    except PipelineError as exc:
        _fail(f"error: {exc}", 1)
    except BrokenPipeError:  # the reader went away (`fmnist-predict ... | head`): as quiet as a shell tool
        _pipe_closed()
    except OSError as exc:  # a file the code didn't expect to fail, e.g. a log written by a library
        where = f"{exc.filename}: " if exc.filename else ""
        _fail(f"error: {where}{exc.strerror or exc}", 1)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not print a traceback
        _fail("interrupted; outputs are written whole or not at all", 130)
    except Terminated:
        _fail("terminated (SIGTERM); outputs are written whole or not at all", 128 + signal.SIGTERM)
    except Exception as exc:  # a bug: still one line, the traceback on request
        if os.environ.get("FMNIST_DEBUG"):
            raise
        _fail(f"error: unexpected {type(exc).__name__}: {flat(exc, 300)} "
              f"(this is a bug; FMNIST_DEBUG=1 shows the traceback)", 1)
    sys.exit(code if isinstance(code, int) else 0)


def _pipe_closed() -> None:
    """Exit as `yes | head` does (128 + SIGPIPE), saying nothing: what's unwritten has no reader.
    stdout goes to /dev/null first, so the flush at exit doesn't fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    sys.exit(128 + signal.SIGPIPE)


def _fail(message: str, code: int) -> None:
    print(message, file=sys.stderr, flush=True)
    sys.exit(code)
