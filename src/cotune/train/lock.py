"""One training process per run directory: an exclusive lock on ``RUN/.lock``."""

from __future__ import annotations

import os

from cotune.rundir import RunDir

__all__ = ["RunInUse", "lock_run"]


class RunInUse(FileExistsError):
    """Another process is training in the run directory (its lock is held)."""


def lock_run(run: RunDir):
    """An exclusive lock on ``RUN/.lock`` (held while the file stays open; the OS drops it when
    the process ends, SIGKILL included); RunInUse naming the holder's pid if another process has it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    handle = open(run.lock_file, "a+")  # noqa: SIM115 - held for the run's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunInUse(f"{run.path} is in use: another cotune train (pid {holder}) is training in it; wait for it to "
                       f"finish or stop it before resuming") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
