"""Damaged files: one-line error checks, junk put into nested data (hypothesis), size limits."""

from __future__ import annotations

import resource

import torch
from hypothesis import strategies as st


def one_line(message: str, *expected: str) -> None:
    """`message` is one line, no traceback, and says each of `expected`."""
    assert "\n" not in message.strip() and "Traceback" not in message, message
    for text in expected:
        assert text in message, message


def leaves(node, path=()):
    """Every place a value sits in a nest of dicts and lists (a model file, a checkpoint), as a path of keys."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from leaves(value, (*path, i))
    if path:
        yield path


def put_junk(data, nest) -> tuple:
    """Replace one value of `nest`, at a place hypothesis draws, with JUNK; the place's path."""
    where = data.draw(st.sampled_from(sorted(leaves(nest), key=str)))
    node = nest
    for part in where[:-1]:
        node = node[part]
    node[where[-1]] = data.draw(JUNK)
    return where


# What a damaged file may hold in any one place.
JUNK = st.one_of(st.none(), st.booleans(), st.integers(-3, 10), st.floats(allow_nan=True), st.text(max_size=3),
                 st.lists(st.integers(), max_size=2), st.just({}),
                 st.builds(torch.zeros, st.lists(st.integers(0, 3), max_size=3).map(tuple)))


def file_size_limit(limit: int):
    """Writes past `limit` bytes fail with EFBIG, as on a full disk (Python ignores SIGXFSZ)."""
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return apply
