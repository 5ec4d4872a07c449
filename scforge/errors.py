"""How every command ends on bad input: one line on stderr, exit status 2, no traceback.

A user's mistake (a missing path, a corrupt shard, a config that cannot work, a full or read-only
output directory) is not a bug, so it gets the message the code raised, which names the problem
and the fix, and nothing else. The project's own error types all derive from ``ValueError``
(``ConfigError``, ``ShardFormatError``, ``SourceError``, ``VocabError``, ``ResumeError``, ...);
with the file-system errors below they make :data:`USER_ERRORS`. Anything else is a bug and keeps
its traceback. ``SCFORGE_TRACEBACK=1`` shows the traceback of a user error too.

Leaf module: no torch, no scforge imports (every command's entry point uses it).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable
from typing import NoReturn

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, FloatingPointError)
"""Exception types a command reports in one line (``OSError`` only for the errnos below)."""

_OS_FIXES = {
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "check the path",
    errno.EISDIR: "give a file, not a directory",
    errno.EACCES: "choose a directory you can write to, or fix its permissions",
    errno.EPERM: "choose a directory you can write to, or fix its permissions",
    errno.EROFS: "the file system is read-only: choose another output directory",
    errno.ENOSPC: "the disk is full: free space or choose another output directory",
    errno.EDQUOT: "the disk quota is exceeded: free space or choose another output directory",
    errno.EFBIG: "the file exceeds the size limit: free space or choose another output directory",
}


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a user's mistake to report in one line (see the module docstring).

    ``OSError`` counts when it is about a path (missing, not a directory, no permission, disk
    full, read-only) or when scforge raised it itself with a message (no errno).
    """
    if isinstance(exc, OSError):
        return exc.errno is None or exc.errno in _OS_FIXES
    return isinstance(exc, USER_ERRORS)


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line; file-system errors get the path and the fix."""
    if isinstance(exc, OSError) and exc.errno in _OS_FIXES and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        msg = f"{exc.strerror}{where} ({_OS_FIXES[exc.errno]})"
    elif isinstance(exc, KeyError) and exc.args:
        msg = str(exc.args[0])
    else:
        msg = str(exc) or type(exc).__name__
    return " ".join(msg.split())


def report(prog: str, exc: BaseException) -> int:
    """Prints ``<prog>: error: <message>`` on stderr and returns the exit status 2."""
    print(f"{prog}: error: {one_line(exc)}", file=sys.stderr, flush=True)
    return 2


def run_command(prog: str, fn: Callable[[], int | None]) -> int:
    """Runs a command body; a user error becomes one stderr line and exit status 2.

    Args:
        prog: the command as the user typed it (``scforge embed``).
        fn: the body; its return value is the exit status (``None`` means 0).
    """
    try:
        return int(fn() or 0)
    except BaseException as exc:  # noqa: BLE001  (re-raised unless it is a user error)
        if not is_user_error(exc) or os.environ.get("SCFORGE_TRACEBACK"):
            raise
        return report(prog, exc)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` whose usage errors are one line too (``prog: error: ... (see --help)``)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)
