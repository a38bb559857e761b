"""The project's two kinds of bad input, and how a command line reports them.

A `ConfigError` is a bad parameter, a `UserError` any other bad input (a missing archive, a corrupt
file). Both carry one line that names the key or file, what is wrong and what is allowed; stage
entry points wrapped in `exit_on_error` print it on stderr and exit with code 2.
"""
from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class ConfigError(ValueError):
    """A bad parameter: the message is one line, naming the key and what is allowed."""


class UserError(RuntimeError):
    """Bad input other than params (a missing archive, a corrupt shard): one line, exit 2."""


def exit_on_error(fn: F) -> F:
    """Decorator for stage entry points: a ConfigError or UserError becomes one line on stderr and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, UserError) as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one-line UserErrors (its default prints usage on two lines)."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message}")
