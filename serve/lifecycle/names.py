"""The one rule for model names and versions: in URLs, gRPC requests, admin calls and the folders
of the repository alike (a folder the rule refuses is never served).

A model name becomes a folder name in the repository, so a name is only ever a name: never a path,
never a URL. Triton's load API path traversal (CVE-2023-31036) is the cautionary tale. The pattern
is the one the trusted servers converged on: `[A-Za-z0-9][A-Za-z0-9_.-]*`, no `..`, bounded length.
Each refusal says exactly what was wrong, and views turn it into a 400.
"""

from __future__ import annotations

import re

MAX_NAME_LENGTH = 128
MAX_VERSION = 2**63 - 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_VERSION = re.compile(r"[1-9][0-9]*")
_NAME_RULE = (
    "a model name is 1-128 characters of letters, digits, '_', '.' and '-', starting with a "
    "letter or digit, without '..'"
)


class InvalidName(ValueError):
    """A model name or version that is refused; the message says why (HTTP 400)."""


def validate_model_name(name: str) -> str:
    """Return `name` unchanged if it is a safe model name; raise `InvalidName` saying why not."""
    shown = repr(name) if len(name) <= 80 else repr(name[:80]) + "..."
    if not name:
        raise InvalidName(f"model name is empty; {_NAME_RULE}")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(f"model name {shown} is {len(name)} characters, over {MAX_NAME_LENGTH}")
    if "\x00" in name:
        raise InvalidName(f"model name {shown} contains a NUL character; {_NAME_RULE}")
    if "/" in name or "\\" in name:
        raise InvalidName(
            f"model name {shown} contains a path separator; model names are not paths. {_NAME_RULE}"
        )
    if any(ch.isspace() for ch in name):
        raise InvalidName(f"model name {shown} contains whitespace; {_NAME_RULE}")
    if "%" in name:
        raise InvalidName(
            f"model name {shown} contains '%' (URL-encoded characters are not allowed); "
            f"{_NAME_RULE}"
        )
    if ".." in name:
        raise InvalidName(f"model name {shown} contains '..'; {_NAME_RULE}")
    if not _NAME.fullmatch(name):
        raise InvalidName(f"model name {shown} is not allowed; {_NAME_RULE}")
    return name


def is_valid_model_name(name: str) -> bool:
    """Whether `validate_model_name` accepts `name`."""
    try:
        validate_model_name(name)
    except InvalidName:
        return False
    return True


def validate_version(version: str) -> int:
    """Return a version folder name as a positive integer; raise `InvalidName` otherwise."""
    shown = repr(version) if len(version) <= 40 else repr(version[:40]) + "..."
    if not _VERSION.fullmatch(version) or int(version) > MAX_VERSION:
        raise InvalidName(
            f"model version {shown} is not allowed; a version is a positive integer "
            "without leading zeros"
        )
    return int(version)
