"""How every command reports a user error: one line on stderr and exit code 2, no traceback."""

from __future__ import annotations

import functools
import sys

import click

from lmlab.errors import LmlabError


def user_errors(fn):
    """Turn user errors into one line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LmlabError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper
