"""Model names and versions: only plain names pass; each traversal form gets a clear reason."""

from __future__ import annotations

import pytest

from serve.lifecycle.names import InvalidName, validate_model_name, validate_version


@pytest.mark.parametrize(
    "name", ["digits", "m", "resnet-50", "bert_base.v2", "A1", "0model", "a" * 128]
)
def test_plain_names_pass(name: str) -> None:
    assert validate_model_name(name) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../../etc/passwd", "path separator"),
        ("/etc/passwd", "path separator"),
        ("model/..", "path separator"),
        ("..", "contains '..'"),
        ("a..b", "contains '..'"),
        (".", "is not allowed"),
        (".hidden", "is not allowed"),
        ("-rf", "is not allowed"),
        ("model name", "whitespace"),
        (" model", "whitespace"),
        ("model\t", "whitespace"),
        ("model\n", "whitespace"),
        ("", "empty"),
        ("model\x00", "NUL"),
        ("..%2F..%2Fetc%2Fpasswd", "URL-encoded"),
        ("%2e%2e", "URL-encoded"),
        ("..\\..\\windows", "path separator"),
        ("mödel", "is not allowed"),
        ("model:latest", "is not allowed"),
        ("a" * 129, "over 128"),
    ],
)
def test_hostile_names_are_refused_with_a_reason(name: str, why: str) -> None:
    with pytest.raises(InvalidName) as info:
        validate_model_name(name)
    assert why in str(info.value)
    if why not in ("empty", "over 128"):
        assert repr(name) in str(info.value)


@pytest.mark.parametrize(("text", "value"), [("1", 1), ("42", 42), (str(2**63 - 1), 2**63 - 1)])
def test_versions_are_positive_integers(text: str, value: int) -> None:
    assert validate_version(text) == value


@pytest.mark.parametrize("text", ["0", "-1", "01", "1.0", "", " 1", "..", "1/../2", str(2**63)])
def test_bad_versions_are_refused(text: str) -> None:
    with pytest.raises(InvalidName, match="positive integer"):
        validate_version(text)
