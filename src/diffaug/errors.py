"""Bad input as one line (the key or file, what is wrong, what is allowed) on stderr and exit 2, never a
traceback: a `ConfigError` (a bad parameter), a `UserError` (any other) or an `OSError` (naming path and cause).
"""
from __future__ import annotations

import argparse
import errno
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class ConfigError(ValueError):
    """A bad parameter: the message is one line, naming the key and what is allowed."""


class UserError(RuntimeError):
    """Bad input other than params (a missing archive, a corrupt shard): one line, exit 2."""


# What an OSError means, in the words a user acts on.
_CAUSES = {
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system",
    errno.EISDIR: "it is a folder",
    errno.ENAMETOOLONG: "name too long",
}


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest of `path` and its parents that exists, when it is not a folder."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


def os_fault(error: OSError, path: str | Path | None = None, action: str = "cannot write") -> UserError:
    """One line for an OSError met while writing `path` (default: the file the OS names): the path, `action`
    and the cause (read-only, no space, file too large, a file where a folder should be...)."""
    target = Path(path) if path is not None else Path(error.filename) if error.filename is not None else None
    blocker = _file_in_the_way(target) if target is not None and error.errno in (errno.ENOTDIR, errno.EEXIST) else None
    if blocker is not None:
        cause = "it is a file, not a folder" if blocker == target else f"{blocker} is a file, not a folder"
    else:
        cause = _CAUSES.get(error.errno or 0) or error.strerror or type(error).__name__
    what = f"{action}: {cause}" if action else cause
    return UserError(f"{target}: {what}" if target is not None else what)


def exit_on_error(fn: F) -> F:
    """Decorator for stage entry points: a ConfigError, UserError or OSError becomes one line on stderr and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, UserError, OSError) as e:  # an OSError: a write outside diffaug.io (a library's log file)
            print(f"error: {os_fault(e, action='') if isinstance(e, OSError) else e}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one-line UserErrors (its default prints usage on two lines)."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message}")
