"""A local Netron viewer for an exported file: one server per session, on 127.0.0.1 only.

Uses the `netron` package from PyPI. `netron.start(file, address=(host, port), browse=False)` serves the
viewer page at `/` and the model at `/data/<file name>` (the page's `<meta name="file">` points there) from
a daemon thread, and returns the (host, port) it bound; port 0 lets the OS pick a free one.

What this module adds to netron:
  * stop is complete: `netron.stop(address)` closes the socket and asks the thread to end but does not
    wait; `NetronServer.stop()` waits until the thread is gone and the port refuses connections.
  * each server serves its own file: netron keeps the file on its request-handler *class*, shared by every
    server in the process, so a second server would make the first one show the second file. Each server
    gets its own handler subclass (two browser sessions, two files).
  * only that file is served: netron serves any file in the model's folder (`/data/<any name>`), so the
    file is first linked (or copied) into a private temporary folder of its own.
  * the root logger is left alone (netron calls `logging.basicConfig` when it has no handler).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"  # never anything else: the viewer is for this machine's browser only
HOSTED = "https://netron.app"

_LOCK = threading.Lock()  # netron's start sets shared class state: one start at a time
_SERVERS: list[NetronServer] = []


def hosted_url() -> str:
    """Netron's hosted viewer, for people with internet: open it and drop the downloaded file on it."""
    return HOSTED


@dataclass(eq=False)
class NetronServer:
    file: Path  # the served copy (in `folder`), named like the original
    address: tuple[str, int]  # (host, port) the server listens on
    folder: Path  # private temporary folder that holds only `file`
    thread: threading.Thread | None = field(default=None, repr=False)  # netron's server thread
    stopped: bool = False

    @property
    def url(self) -> str:
        """The viewer page, which loads the file by itself."""
        return f"http://{self.address[0]}:{self.address[1]}/"

    @property
    def data_url(self) -> str:
        """Where netron serves the model file itself."""
        return f"{self.url}data/{urllib.parse.quote(self.file.name)}"

    @property
    def running(self) -> bool:
        return not self.stopped and port_open(self.address)

    def stop(self, timeout: float = 5.0) -> None:
        """Close the port, wait for the server thread to end and delete the private copy. Idempotent."""
        import netron

        if not self.stopped:
            netron.stop(self.address)
            if self.thread is not None:
                self.thread.join(timeout)  # its loop wakes every 0.25 s and sees the closed socket
                if self.thread.is_alive():
                    raise RuntimeError(f"Netron's thread for {self.url} did not end within {timeout:g} s")
            if port_open(self.address):
                raise RuntimeError(f"{self.url} still accepts connections after stop")
            self.stopped = True
        shutil.rmtree(self.folder, ignore_errors=True)
        with _LOCK:
            if self in _SERVERS:
                _SERVERS.remove(self)

    def __enter__(self) -> NetronServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def port_open(address: tuple[str, int], timeout: float = 0.5) -> bool:
    """Does something accept TCP connections at `address`?"""
    with contextlib.suppress(OSError), socket.create_connection(address, timeout=timeout):
        return True
    return False


def _private_copy(file: Path) -> tuple[Path, Path]:
    """(folder, file) with a hard link to `file` (a copy across file systems) alone in a 0700 folder."""
    folder = Path(tempfile.mkdtemp(prefix="vislab-netron-"))
    served = folder / file.name
    try:
        os.link(file, served)
    except OSError:
        shutil.copy2(file, served)
    return folder, served


@contextlib.contextmanager
def _root_logging_untouched():
    """Netron runs logging.basicConfig() when the root logger has no handler; give it one for the call."""
    root = logging.getLogger()
    placeholder = None if root.handlers else logging.NullHandler()
    if placeholder:
        root.addHandler(placeholder)
    try:
        yield
    finally:
        if placeholder:
            root.removeHandler(placeholder)


def _own_handler(thread: threading.Thread, title: str) -> None:
    """Give this server a handler class of its own, holding its own file (see the module docstring)."""
    server = getattr(thread, "server", None)
    shared = getattr(server, "RequestHandlerClass", None)
    if shared is not None and hasattr(shared, "content"):
        content = copy.copy(shared.content)
        content.name = title  # the page title: the file's own name, not the private copy's path
        server.RequestHandlerClass = type("VislabNetronHandler", (shared,), {"content": content})


def start(file: str | Path, port: int | None = None) -> NetronServer:
    """Serve `file` in Netron at http://127.0.0.1:PORT/ (a free port when `port` is None)."""
    import netron

    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such model file")
    if port is not None and not 0 <= port <= 65535:
        raise ValueError(f"port must be 0-65535, not {port}")
    folder, served = _private_copy(file)
    try:
        with _LOCK, _root_logging_untouched():
            before = set(threading.enumerate())
            address = tuple(netron.start(str(served), address=(HOST, port or 0), browse=False))
            thread = next((t for t in threading.enumerate()
                           if t not in before and tuple(getattr(t, "address", ())) == address), None)
            if thread is not None:
                _own_handler(thread, file.name)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    server = NetronServer(served, address, folder, thread)
    with _LOCK:
        _SERVERS.append(server)
    _wait_open(address)
    return server


def _wait_open(address: tuple[str, int], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not port_open(address, timeout=0.2):
        if time.monotonic() > deadline:
            raise RuntimeError(f"Netron did not open {address[0]}:{address[1]} within {timeout:g} s")
        time.sleep(0.05)


def servers() -> list[NetronServer]:
    """The servers this process started and has not stopped."""
    with _LOCK:
        return list(_SERVERS)


def stop_all() -> None:
    """Stop every server this module started (at exit, or in tests)."""
    for server in servers():
        server.stop()
