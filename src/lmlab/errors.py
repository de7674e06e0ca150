"""Typed errors that speak to the user, and the decorator that turns them into one line and exit code 2."""

from __future__ import annotations


class LmlabError(Exception):
    """Base class for errors caused by user input rather than by a bug."""


class ConfigError(LmlabError, ValueError):
    """An invalid configuration value, naming the field, the value and what is allowed."""


class UnknownComponentError(ConfigError):
    """A registry lookup for a name that is not registered."""


class DataError(LmlabError):
    """A corpus or dataset that cannot be read or is unusable."""


class CheckpointError(LmlabError):
    """A checkpoint or run directory that is missing, partial or incompatible."""


class RunLockedError(LmlabError):
    """A run directory that another live process is writing (its lock names the holder)."""


class ProcessLostError(LmlabError):
    """Another process of the training group stopped (its node died or was preempted) mid-run."""


class MemoryBudgetError(LmlabError, MemoryError):
    """A step that does not fit in the device's memory, with what to change."""


class MissingExtraError(LmlabError, ImportError):
    """An optional dependency is not installed."""


def require(module: str, extra: str):
    """Import an optional module or raise a MissingExtraError naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"'{module}' is not installed; install it with: pip install \"lmlab[{extra}]\""
        ) from exc


def user_errors(fn):
    """Turn user errors into one line on stderr and exit code 2 (no traceback): how every command reports them."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LmlabError as exc:
            import click

            click.echo(f"error: {exc}", err=True)
            raise SystemExit(2) from None

    return wrapper
