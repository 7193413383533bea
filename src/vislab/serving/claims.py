"""Which process holds what: the owner record of a claim or of a Ray-driven job, and whether a process still runs.

A job folder names the process behind it (status.json: the worker's pid and host, or the Ray driver's owner
record; claim.json: the server that started it). A record is only as good as the check that the process is
still the one it names: a pid is recycled, so an owner record carries the pid's kernel start time too, and a
worker's pid counts only while its command line still says it is a vislab worker.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

HOST = socket.gethostname()
# `python -m WORKER_MODULE FOLDER` runs one job (vislab.serving.worker); a live pid whose command line does not
# name it is some other program that was given a recycled pid
WORKER_MODULE = "vislab.serving.worker"


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/PID/stat): with the pid, names one process even
    after its pid is recycled. None where /proc is missing."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def me(**extra) -> dict:
    """This process as the owner of a claim or a Ray-driven job: host, pid and the pid's start time."""
    return {"host": HOST, "pid": os.getpid(), "pid_start": _start_time(os.getpid()), **extra}


def owner_alive(owner: dict) -> bool:
    """Whether the process of an owner record still runs. A process of another host cannot be seen from
    here: it counts as alive (its own server marks the job when it ends)."""
    if not isinstance(owner, dict):
        return False
    if owner.get("host") not in (None, HOST):
        return True
    pid = owner.get("pid")
    if not _pid_exists(pid):
        return False
    start = owner.get("pid_start")
    return start is None or _start_time(pid) in (None, start)


def _pid_exists(pid) -> bool:
    """A live process has this pid (one of another user's counts)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def running_alive(rec: dict) -> bool:
    """Whether a job whose status record says running still has its process: the Ray driver that follows it
    (`driver`), else the local worker (`pid`, on `host`)."""
    if isinstance(rec.get("driver"), dict):
        return owner_alive(rec["driver"])
    if rec.get("host") not in (None, HOST):
        return True  # a worker on another server of a shared lab home: that server marks it
    return worker_alive(rec.get("pid"))


def worker_alive(pid) -> bool:
    """Whether `pid` is a vislab worker (`python -m WORKER_MODULE`) that still runs."""
    if not _pid_exists(pid):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.parent.parent.is_dir() and Path("/proc/self").exists():
        try:  # a recycled pid of another program is not our worker
            return WORKER_MODULE.encode() in cmdline.read_bytes()
        except OSError:
            return False
    return True
