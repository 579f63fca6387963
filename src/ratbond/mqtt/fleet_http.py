"""The fleet controller's page, ``/fleet.json``, ``/fleet.txt`` and ``/metrics``.

The HTTP side is the status server's (:class:`ratbond.status.server.StatusServer`): the same
tiny HTTP/1.0 responder, the same token check (``Authorization: Bearer T`` or ``?token=T``,
constant time), the same strict CSP built from hashes of the inlined CSS and JS.  Only the
routes differ.  ``ratbond fleet`` is not an asyncio program, so the server gets its own
event loop on a thread; it reads the view through :meth:`FleetView.snapshot`, a copy taken
under a short lock, so a slow or stuck HTTP client never holds up paho's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ratbond.mqtt import topics
from ratbond.mqtt.fleet import FleetView, MemberView
from ratbond.mqtt.fleet_metrics import metrics_text
from ratbond.status.server import (
    JSON_TYPE,
    MAX_REQUEST_BYTES,
    TEXT_TYPE,
    InlinePage,
    Response,
    StatusServer,
    dump_json,
    is_loopback,
    plain_response,
)

log = logging.getLogger("ratbond.fleet")


def fleet_page() -> InlinePage:
    """The fleet page (``assets/fleet.*``), its no-JS link to ``/fleet.txt``."""
    return InlinePage("ratbond.mqtt", "fleet", "fleet.txt", img_src="data:")


def fleet_document(members: list[MemberView], now: float, ignored: int = 0) -> dict[str, Any]:
    """``/fleet.json`` (docs/fleet.md describes every field)."""
    return {"generated_at": round(now, 3),
            "counts": {"members": len(members),
                       "online": sum(m.mqtt == topics.ONLINE for m in members),
                       "attention": sum(m.attention for m in members),
                       "ignored_messages": ignored},
            "members": [m.to_dict() for m in members]}


class FleetServer(StatusServer):
    """The status server's responder and token check with the fleet's routes."""

    def __init__(self, view: FleetView, *, token: str | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        super().__init__(dict, token=token)
        self._view = view
        self._wall = wall
        self._page = fleet_page()

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port,
                                                  limit=MAX_REQUEST_BYTES)
        log.info("fleet page on http://%s:%d/", host, self.port or port)
        if self._token is None and not is_loopback(host):
            log.warning("fleet page on %s without --http-token-file: anyone who reaches it "
                        "sees every router's name, state and throughput", host)

    def render(self, target: str, headers: Mapping[str, str] | None = None) -> Response:
        try:
            parts = urlsplit(target)
            query = parse_qs(parts.query, max_num_fields=16)
        except ValueError:
            return plain_response(400, "bad request\n")
        if not self.authorized(query, headers or {}):
            return plain_response(401, "a token is required: Authorization: Bearer T or ?token=T\n",
                          {"WWW-Authenticate": 'Bearer realm="ratbond"'})
        route = parts.path
        if route == "/":
            return Response(200, "text/html; charset=utf-8",
                            self._page.render(query.get("token", [None])[0]),
                            {"Content-Security-Policy": self._page.csp})
        if route not in ("/fleet.json", "/fleet.txt", "/metrics"):
            return plain_response(404, "not found\n")
        now = self._wall()
        members = self._view.snapshot(now)
        if route == "/fleet.json":
            return Response(200, JSON_TYPE, dump_json(fleet_document(members, now,
                                                              self._view.ignored)))
        if route == "/metrics":
            return Response(200, CONTENT_TYPE_LATEST, metrics_text(members,
                                                                   self._view.ignored))
        return Response(200, TEXT_TYPE, (self._view.render(now, members) + "\n").encode())


class FleetHttpThread:
    """Runs a :class:`FleetServer` on its own event loop and thread; ``start`` returns once
    it listens (or raises the bind error), ``stop`` closes it."""

    def __init__(self, server: FleetServer, host: str, port: int) -> None:
        self.server = server
        self.host, self.port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ratbond-fleet-http",
                                        daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the fleet page on {self.host}:{self.port} did not start")
        if self._error is not None:
            raise self._error

    def stop(self, timeout: float = 5.0) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self.server.start(self.host, self.port)
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        self.port = self.server.port or self.port
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.server.close()
