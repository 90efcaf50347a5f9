"""fmnist/core/errors.py: what a message quotes of a file stays one short, printable line,
however large or strange the value (most of the module is tested through its users)."""

from __future__ import annotations

import collections

from fmnist.core.errors import one_line, shown


class Leaf:
    """Counts how often its repr is asked for."""
    calls = 0

    def __repr__(self) -> str:
        Leaf.calls += 1
        return "leaf"


def test_shown_writes_no_more_of_a_value_than_it_shows():
    """Found while fuzzing params.yaml: ten lines of YAML aliases (a "billion laughs") are lists
    sharing lists, a billion leaves in all, and repr() of them ran for minutes and gigabytes.
    Here a million leaves: shown() asks for the few it shows."""
    value = [Leaf()] * 10
    for _ in range(5):
        value = [value] * 10
    Leaf.calls = 0
    text = shown(value)
    assert text.startswith("[[[[[[leaf, leaf, leaf") and text.endswith("...") and len(text) == 80
    assert Leaf.calls < 100


def test_shown_is_repr_for_what_a_message_quotes():
    for value in (1, 0.5, None, True, "lr", [1, (2,), ()], {"a": [1, 2.5]}, {(1, 2): {3}}):
        assert shown(value) == repr(value)
    assert shown(collections.OrderedDict(a=1)) == "OrderedDict({'a': 1})"
    assert shown(list(range(100))) == repr(list(range(100)))[:77] + "..."


def test_shown_names_what_repr_cant_write_and_escapes_what_a_terminal_would_act_on():
    assert shown(10 ** 5000) == "<int>"  # repr() refuses an int of over 4,300 digits (ValueError)
    deep = []
    for _ in range(100_000):
        deep = [deep]
    assert shown(deep).startswith("[[[[") and len(shown(deep)) <= 80  # no RecursionError
    assert shown("a\x1b[2Jb") == "'a\\x1b[2Jb'"
    assert one_line(ValueError("no record data/\x07 here.\nmore")) == "no record data/\\x07 here"
