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
    """``host:port`` of the server: the name it was given at start-up (its training children inherit it),
    else this host and the ``--port`` of this process. Reading it changes nothing."""
    name = os.environ.get(ENV)
    if not name:
        port = _port_from_argv()
        name = f"{socket.gethostname()}:{port}" if port else socket.gethostname()
    return name


def name_this_server() -> str:
    """The server's start-up names itself in its environment, so that the training processes monailabel
    starts (with a copy of that environment, and no ``--port``) say the same name. Only a server does:
    any other process that reads :func:`server_name` (a test, a tool) leaves its environment alone."""
    name = os.environ[ENV] = server_name()
    return name


def process_name() -> str:
    """The server and this process: a replica restarted on the same port is another process."""
    return f"{server_name()} pid {os.getpid()}"
