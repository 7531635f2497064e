"""Errors a user can cause: each carries one line that names the thing and the problem."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError

USAGE_ERROR = 2


class UserError(Exception):
    """A bad file, setting or input. The CLI prints the message alone and exits 2."""


class SettingError(UserError):
    """A setting names something that cannot be used (a missing certificate, say): a
    restart will not fix it, so `run` exits 78 rather than 2."""


class CommandError(UserError):
    """A fleet command cannot be done; the text is the reply's reason."""


def validation_lines(err: ValidationError, source: str) -> list[str]:
    """One line per problem: `source: dotted.key: message`."""
    lines = []
    for problem in err.errors():
        key = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        lines.append(f"{source}: {key}: {problem['msg']}")
    return lines


def run_command(prog: str, args: argparse.Namespace, log_format: str) -> int:
    """Runs a parsed command line's handler the way both CLIs do: a UserError is one line
    and exit 2 (a traceback with --debug), Ctrl-C is 130."""
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format=log_format,
        stream=sys.stderr,
    )
    try:
        code: int = args.handler(args)
        return code
    except UserError as exc:
        if args.debug:
            raise
        print(f"{prog}: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        return 130
