"""Errors a user can cause: each carries one line that names the thing and the problem."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class UserError(Exception):
    """A bad file, setting or input. The CLI prints the message alone and exits 2."""


def validation_lines(err: ValidationError, source: str) -> list[str]:
    """One line per problem: `source: dotted.key: message`."""
    lines = []
    for problem in err.errors():
        key = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        lines.append(f"{source}: {key}: {problem['msg']}")
    return lines
