"""Which server process this is, as other replicas (and their clients) should read it."""

from __future__ import annotations

import os
import socket
import sys

ENV = "SAM2_3D_REPLICA"


def _port_from_argv() -> str | None:
    argv = sys.argv
    for flag in ("--port", "-p"):
        if flag in argv[:-1]:
            return argv[argv.index(flag) + 1]
    return None


def server_name() -> str:
    """``host:port`` of the server; its training child processes inherit it (through the environment)."""
    name = os.environ.get(ENV)
    if not name:
        port = _port_from_argv()
        name = f"{socket.gethostname()}:{port}" if port else socket.gethostname()
        os.environ[ENV] = name  # monailabel starts the train process with a copy of this environment
    return name


def process_name() -> str:
    """The server and this process: a replica restarted on the same port is another process."""
    return f"{server_name()} pid {os.getpid()}"
