"""Half-open connections time out: a connection that has not sent a complete request head within
``--conf header_timeout_s`` seconds (default 20) is closed.

``monailabel start_server`` runs uvicorn with its defaults and passes none of its timeouts through (no
option, no environment variable: ``monailabel/main.py`` names each ``uvicorn.run`` argument). uvicorn's
``timeout_keep_alive`` (5 s) closes a connection idle *after* an answer, but a connection that sends
nothing, or a request head one byte at a time, was held open for ever (a slowloris). uvicorn's HTTP
protocol class is patched here, in the server process, before it serves: a timer starts when a
connection opens and after each answer, and stops when a complete request head has arrived.
A request body that arrives slowly is not cut (large uploads legitimately take long); put a reverse
proxy with body timeouts in front of an exposed server (docs/security.md).
"""

from __future__ import annotations

import logging

from ..engine.options import option

logger = logging.getLogger(__name__)

DEFAULT_HEADER_TIMEOUT_S = 20.0
HEADER_TIMEOUT_S = DEFAULT_HEADER_TIMEOUT_S
CLOSED = {"half_open": 0}


def _arm(protocol) -> None:
    _disarm(protocol)
    protocol._sam2_head_timer = protocol.loop.call_later(HEADER_TIMEOUT_S, _expire, protocol)


def _disarm(protocol) -> None:
    timer = getattr(protocol, "_sam2_head_timer", None)
    if timer is not None:
        timer.cancel()
        protocol._sam2_head_timer = None


def _expire(protocol) -> None:
    protocol._sam2_head_timer = None
    busy = protocol.cycle is not None and not protocol.cycle.response_complete
    if not busy and not protocol.transport.is_closing():
        CLOSED["half_open"] += 1
        logger.warning(f"closing a connection from {protocol.client} that sent no complete request in {HEADER_TIMEOUT_S} s")
        protocol.transport.close()


def _patch(cls) -> None:
    if getattr(cls, "_sam2_patched", False):
        return
    connection_made, data_received, on_response_complete = cls.connection_made, cls.data_received, cls.on_response_complete

    def patched_connection_made(self, transport):
        connection_made(self, transport)
        self._sam2_seen_cycle = None
        _arm(self)

    def patched_data_received(self, data):
        data_received(self, data)
        if self.cycle is not None and self.cycle is not getattr(self, "_sam2_seen_cycle", None):  # a request head
            self._sam2_seen_cycle = self.cycle
            _disarm(self)

    def patched_on_response_complete(self):
        on_response_complete(self)
        if not self.transport.is_closing():
            _arm(self)

    cls.connection_made = patched_connection_made
    cls.data_received = patched_data_received
    cls.on_response_complete = patched_on_response_complete
    cls._sam2_patched = True


def install(conf: dict) -> None:
    global HEADER_TIMEOUT_S
    HEADER_TIMEOUT_S = option(conf, "header_timeout_s", DEFAULT_HEADER_TIMEOUT_S)
    from uvicorn.protocols.http.h11_impl import H11Protocol

    _patch(H11Protocol)
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is optional; uvicorn then serves with h11
        pass
    else:
        _patch(HttpToolsProtocol)
    logger.info(f"connections without a complete request head are closed after {HEADER_TIMEOUT_S} s")
