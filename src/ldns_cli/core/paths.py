"""Safe output paths: atomic writes, no silent overwrites, `-` for stdin/stdout.

Every file the tool writes goes through `atomic_output`: data is written to a temporary file in
the destination folder and renamed over the target only when complete, so an interrupted write
never leaves a half-written file behind (and never destroys the previous one). Every `OSError`
on the way (a read-only file system, a name too long, a full disk, a folder that refuses files)
becomes an `LdnsError` naming the user's path, not the temporary one.

Temporary files and scratch folders are named `.ldns-<host>.<pid>-*.tmp` / `*.scratch` after the
process that made them. A process killed outright (kill -9, a node failure) cannot remove them;
the next run that writes into the same folder removes those whose process is gone (same host,
no such pid). By hand: `rm -rf <folder>/.ldns-*` while no ldns run writes there.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ldns_cli.core.errors import LdnsError

STDIO = "-"


_OS_HINTS = {
    errno.EROFS: "the file system is read-only: write somewhere else",
    errno.ENAMETOOLONG: "use a shorter file name",
    errno.ENOSPC: "free disk space, or write somewhere else",
    errno.EDQUOT: "your disk quota is full: free space, or write somewhere else",
    errno.EACCES: "check the folder's permissions, or write somewhere else",
    errno.EPERM: "check the folder's permissions, or write somewhere else",
    errno.ENOENT: "check that the folder exists and accepts files",
}


def output_error(path: str | Path, exc: OSError) -> LdnsError:
    """A one-line error for an OS failure while writing `path` (the user's name for it)."""
    reason = exc.strerror or type(exc).__name__
    hint = _OS_HINTS.get(exc.errno or 0, "check the output path")
    return LdnsError(f"cannot write '{path}': {reason}", hint)


def check_output(path: str | Path, force: bool) -> None:
    """Refuse to overwrite an existing file unless `force`; check the folder exists."""
    if str(path) == STDIO:
        return
    p = Path(path)
    try:
        exists, is_dir, parent_exists = p.exists(), p.is_dir(), p.parent.exists()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise output_error(p, exc) from None
    if exists and is_dir:
        raise LdnsError(f"output path '{p}' is a folder", "give a file name, e.g. out.nwb")
    if exists and not force:
        raise LdnsError(f"'{p}' already exists", "pass --force to overwrite it")
    if not parent_exists:
        raise LdnsError(f"folder '{p.parent}' does not exist", f"create it: mkdir -p {p.parent}")


# ---------------------------------------------------------------------------------------------
# Temporary files named after their process, and removal of those a killed run left behind
# ---------------------------------------------------------------------------------------------
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
_OWNED = re.compile(r"^\.ldns-(?P<host>[A-Za-z0-9]+)\.(?P<pid>\d+)-.*\.(tmp|scratch)$")


def temp_prefix() -> str:
    """Name prefix of this process's temporary files and scratch folders."""
    return f".ldns-{_HOST}.{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's live process (or an absurd pid): leave its files alone
    return True


def remove_stale(folder: str | Path) -> list[Path]:
    """Remove temporary files and scratch folders in `folder` whose process is gone (this host
    only: a pid means nothing on another machine sharing the folder). Returns what was removed;
    anything that cannot be inspected or removed is left as it is."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _OWNED.match(entry.name)
        if match is None or match["host"] != _HOST or _alive(int(match["pid"])):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed


def check_model_target(path: Path, force: bool, what: str) -> None:
    """Refuse to replace a fitted model unless `force`.

    A fit writes its checkpoint during training (periodically and on Ctrl-C), so the previous
    model would be gone long before the new one is any good: a mistyped `-m` must not cost a
    fit that took hours.
    """
    if path.exists() and not force:
        raise LdnsError(
            f"'{path}' already holds a fitted {what}",
            "pass --force to replace it, --resume to continue an interrupted fit, "
            "or -m to fit into another folder",
        )


def check_input(path: str | Path) -> Path | None:
    """Check that an input file exists and is a file; `-` (stdin) returns None."""
    if str(path) == STDIO:
        return None
    p = Path(path)
    if not p.exists():
        raise LdnsError(f"file '{p}' not found", "check the path (relative to the working folder)")
    if p.is_dir():
        raise LdnsError(f"'{p}' is a folder, not a file", "give the path of an .nwb or .h5 file")
    return p


@contextmanager
def atomic_output(path: str | Path, force: bool = False, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write to; on success rename it to `path` (or stream to stdout).

    With `path == "-"`, the finished temporary file's bytes go to stdout and the file is removed.
    On any exception the temporary file is removed and the target is untouched.
    """
    to_stdout = str(path) == STDIO
    check_output(path, force)
    folder = Path(tempfile.gettempdir()) if to_stdout else Path(path).parent
    suffix = suffix or ("" if to_stdout else Path(path).suffix)
    remove_stale(folder)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(), suffix=suffix + ".tmp", dir=folder)
        os.close(fd)
    except OSError as exc:
        raise output_error(path, exc) from None
    tmp = Path(tmp_name)
    try:
        with sigterm_as_interrupt():  # `kill` (e.g. a cluster's time limit) also cleans up
            yield tmp
        if tmp.exists():
            # mkstemp makes 0600 files (and some writers replace the file): give the output the
            # usual umask-based permissions so shared model folders stay readable
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        if to_stdout:
            with open(tmp, "rb") as fh:
                sys.stdout.buffer.write(fh.read())
            sys.stdout.buffer.flush()
        else:
            os.replace(tmp, path)
    except OSError as exc:
        if to_stdout and exc.errno == errno.EPIPE:
            raise  # the reader of a pipe went away: not a problem with the path
        raise output_error(path, exc) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def read_stdin_to_temp(suffix: str) -> Path:
    """Copy stdin bytes into a temporary file (HDF5/NWB readers need a seekable file)."""
    data = sys.stdin.buffer.read()
    if not data:
        raise LdnsError(
            "nothing on stdin", "pipe a file in, e.g. `ldns simulate lorenz -o - | ...`"
        )
    fd, name = tempfile.mkstemp(prefix=temp_prefix() + "stdin-", suffix=suffix + ".tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return Path(name)


# ---------------------------------------------------------------------------------------------
# Ctrl-C (and SIGTERM) while writing files
# ---------------------------------------------------------------------------------------------
_interrupted: list[int] = []  # signals received inside `deferred_interrupt`
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM raises KeyboardInterrupt, so cleanup code runs as for Ctrl-C.

    Python's default SIGTERM ends the process at once, leaving temporary outputs and scratch
    folders behind. Only where SIGTERM has its default action (a handler installed by someone
    else, e.g. the trainer's clean-stop handler, is left alone), and only in the main thread.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """While writing a file, Ctrl-C (or SIGTERM) sets a flag that `check_interrupt` raises.

    h5py frees its objects in weakref callbacks, and Python drops ("Exception ignored in ...")
    a KeyboardInterrupt raised inside one: a Ctrl-C during an HDF5 write would often be lost and
    the write would go on. Here the signal only records itself; the writers' loops call
    `check_interrupt` at safe points, and leaving the block checks once more, so the write stops
    with KeyboardInterrupt (and `atomic_output` removes its temporary file). A second Ctrl-C
    raises at once. Outside the main thread this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if _interrupted:
            raise KeyboardInterrupt
        _interrupted.append(signum)

    # signals ignored (or handled outside Python) are left so
    caught = [s for s in _SIGNALS if signal.getsignal(s) not in (signal.SIG_IGN, None)]
    previous = {s: signal.signal(s, handler) for s in caught}
    try:
        yield
        check_interrupt()
    finally:
        for s, prev in previous.items():
            signal.signal(s, prev)
        _interrupted.clear()


def check_interrupt() -> None:
    """Raise KeyboardInterrupt if Ctrl-C came during `deferred_interrupt` (a safe point)."""
    if _interrupted:
        raise KeyboardInterrupt
