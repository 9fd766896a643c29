"""The exception tree: the drawing in ``errors.py``'s docstring is the code, and kinds round-trip."""

from __future__ import annotations

import re

import pytest

from orchestrator import errors

_LINE = re.compile(r"^(?P<indent>[ │├└─]*)(?P<name>[A-Z]\w+)\b")


def _drawn_tree() -> dict[str, str | None]:
    """``{class name: parent name}`` read from the docstring's drawing (depth from the indentation)."""
    doc = errors.__doc__ or ""
    drawing = doc.split("::", 1)[1]
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in drawing.splitlines():
        match = _LINE.match(line.removeprefix("    "))
        if match is None:
            continue
        depth = len(match["indent"]) // 4
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[match["name"]] = stack[-1][1] if stack else None
        stack.append((depth, match["name"]))
    return parents


def _code_tree() -> dict[str, str | None]:
    parents: dict[str, str | None] = {errors.MarsError.__name__: None}
    pending = [errors.MarsError]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            if sub.__module__ == errors.__name__:
                parents[sub.__name__] = cls.__name__
                pending.append(sub)
    return parents


def test_the_docstring_draws_the_tree_the_code_defines() -> None:
    """Every class of errors.py appears in the drawing under its real parent, and nothing else does."""
    drawn = _drawn_tree()
    assert len(drawn) > 20
    assert drawn == _code_tree()


def test_three_branches_and_the_store_is_not_upstream() -> None:
    """Upstream, infrastructure and caller are the three branches; a store outage is ours."""
    branches = {cls.__name__ for cls in errors.MarsError.__subclasses__()}
    assert branches == {"UpstreamError", "InfrastructureError", "CallerError"}
    assert not issubclass(errors.StoreUnavailable, errors.UpstreamError)
    assert issubclass(errors.StoreUnavailable, errors.InfrastructureError)
    assert issubclass(errors.LeaseLost, errors.InfrastructureError)
    assert issubclass(errors.JobCancelled, errors.CallerError)


def test_kinds_name_types_and_round_trip() -> None:
    """A kind is the class name; error_type maps it back; outsiders are MarsError."""
    exc = errors.RateLimited("slow", status=429)
    assert errors.kind_of(exc) == "RateLimited"
    assert errors.error_type("RateLimited") is errors.RateLimited
    assert errors.error_type("CorpusFormatError") is errors.CorpusFormatError
    assert errors.kind_of(ValueError("ours")) == "MarsError"
    assert errors.describe(ValueError("ours")) == "ValueError: ours"
    assert errors.error_type("NoSuchError") is errors.MarsError
    assert errors.error_type(None) is errors.MarsError


@pytest.mark.parametrize(
    ("kinds", "common"),
    [
        ([], None),
        (["RateLimited"], "RateLimited"),
        (["RateLimited", "UpstreamServerError"], "UpstreamStatusError"),
        (["RateLimited", "UpstreamTimeout"], "UpstreamError"),
        (["UpstreamTimeout", "UnknownModel"], "MarsError"),
        (["UnknownModel", "UpstreamRejected"], "CallerError"),
    ],
)
def test_common_kind_is_the_nearest_shared_class(kinds: list[str], common: str | None) -> None:
    """Several traces failing differently fail the job with their nearest common kind."""
    assert errors.common_kind(kinds) == common
