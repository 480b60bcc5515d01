"""One sweep at a time in a results folder: a lock file that names the sweep holding it.

The lock is an ``flock`` on ``<folder>/sweep.lock``. The kernel drops it when its process ends, however
it ends (``kill -9`` and a crashed machine included), so a lock left behind by a killed sweep never blocks
the next one; the file's text (pid, host, start, command) names the holder in the refusal.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from byol_bench.errors import UserError

LOCK_FILE = "sweep.lock"
_held: set[Path] = set()  # the folders this process holds: a tune holds its folder, then runs its final sweep there


@contextlib.contextmanager
def hold_folder(folder: Path, fix: str):
    """Hold ``folder``'s lock while the block runs, or refuse in one line naming the sweep that holds it
    (``fix`` says what else to do). Folders made for the lock are removed again if they end up empty."""
    if folder in _held:
        yield
        return
    created = [parent for parent in (folder, *folder.parents) if not parent.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    handle = _lock(path, fix)
    try:
        handle.seek(0)
        if stale := handle.read().strip():
            print(f"byol-bench: {folder} was locked by a sweep that is no longer running ({_describe(stale)}); "
                  "taking it over", file=sys.stderr)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
        handle.flush()
        _held.add(folder)
        yield
    finally:
        _held.discard(folder)
        path.unlink(missing_ok=True)  # before the lock goes: a sweep waiting for it finds no stale text
        handle.close()
        for parent in created:  # deepest first
            with contextlib.suppress(OSError):
                parent.rmdir()


def _lock(path: Path, fix: str):
    """The lock file, opened and locked; or a UserError naming its holder."""
    while True:
        handle = open(path, "a+")  # not truncated before the lock is ours: the holder's text stays readable
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise UserError(f"{path.parent} is in use by a running sweep ({_describe(path.read_text(errors='replace'))}); "
                            f"wait for it to end or stop it, or {fix}") from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                return handle
        handle.close()  # its holder removed that file as it ended, after we opened it: lock the new one


def _describe(text: str) -> str:
    """The holder as one line: pid, host, start and command, from the lock file's text."""
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}: {holder['command']}"
    except (ValueError, KeyError, TypeError):
        return f"lock file text {text[:80]!r}"
