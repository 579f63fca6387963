"""The status HTTP server: a tiny HTTP/1.0 responder on the runtime's event loop.

No thread and no framework: every request is answered from the model of the current snapshot
(plus the rates the once-a-second sampler derived), then the connection closes.  With a token
every endpoint wants ``Authorization: Bearer T`` or ``?token=T`` (compared in constant time);
the dashboard keeps using a ``?token=`` it was opened with.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from ratbond.logs import RateLimitedLog
from ratbond.status.metrics import ModelCollector
from ratbond.status.model import StatusModel, as_text, build_model, raw_path_key, to_dict
from ratbond.status.sampler import DEFAULT_HORIZON_S, DEFAULT_INTERVAL_S, Sampler
from ratbond.status.schema import json_schema
from ratbond.status.text import render_text

Snapshot = dict[str, Any]
SnapshotFn = Callable[[], Snapshot]

log = logging.getLogger("ratbond.status")

MAX_REQUEST_BYTES = 8192
_REQUEST_TIMEOUT_S = 5.0
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 503: "Service Unavailable"}
_COMMON_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                   "Referrer-Policy": "no-referrer"}
TEXT_TYPE = "text/plain; charset=utf-8"
JSON_TYPE = "application/json"


class TokenError(ValueError):
    """The token file is unreadable or empty (the message names the file)."""


def load_token(path: Path) -> str:
    """The bearer token from ``--http-token-file`` (surrounding whitespace ignored)."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"{path}: cannot read the HTTP token: {exc}") from exc
    if not token:
        raise TokenError(f"{path}: the HTTP token file is empty")
    return token


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    content_type: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


def plain_response(status: int, text: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(status, TEXT_TYPE, text.encode(), headers or {})


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return "'sha256-" + base64.b64encode(digest).decode() + "'"


class InlinePage:
    """A single page with its CSS and JS inlined (``<stem>.html`` with ``/*STYLE*/`` and
    ``/*SCRIPT*/`` in the package's ``assets``), so one (authorised) request gets everything,
    and a CSP that allows exactly those two blocks and nothing from anywhere else.  Its
    ``{{TEXT_URL}}`` is the no-JS link to ``text_path`` (keeping a ``?token=``)."""

    def __init__(self, package: str, stem: str, text_path: str, *,
                 img_src: str = "'self' data:") -> None:
        assets = resources.files(package) / "assets"
        style = (assets / f"{stem}.css").read_text(encoding="utf-8")
        script = (assets / f"{stem}.js").read_text(encoding="utf-8")
        page = (assets / f"{stem}.html").read_text(encoding="utf-8")
        self._page = page.replace("/*STYLE*/", style).replace("/*SCRIPT*/", script)
        self._text_path = text_path
        self.csp = (f"default-src 'none'; connect-src 'self'; img-src {img_src}; "
                    f"style-src {_csp_hash(style)}; script-src {_csp_hash(script)}; "
                    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

    def render(self, token: str | None) -> bytes:
        """The page; a ``?token=`` it was opened with goes into its no-JS link too."""
        link = self._text_path
        if token is not None:
            link += "?token=" + quote(token, safe="")
        return self._page.replace("{{TEXT_URL}}", link).encode()


def dashboard_page() -> InlinePage:
    """The status dashboard (``assets/dashboard.*``), its no-JS link to the text view."""
    return InlinePage("ratbond.status", "dashboard", "status")


class StatusServer:
    """Serves ``/`` (dashboard), ``/status`` (text), ``/status.json`` (+ its schema),
    ``/history.json`` and ``/metrics``; samples ``snapshot_fn`` every ``interval_s`` while
    started."""

    def __init__(self, snapshot_fn: SnapshotFn, *, token: str | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 interval_s: float = DEFAULT_INTERVAL_S,
                 horizon_s: float = DEFAULT_HORIZON_S) -> None:
        self._snapshot_fn = snapshot_fn
        self._token = token.encode() if token else None
        self._clock = clock
        self.sampler = Sampler(interval_s=interval_s, horizon_s=horizon_s)
        self._dashboard = dashboard_page()
        self._server: asyncio.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._errors = RateLimitedLog(log, interval=60.0, clock=clock)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port,
                                                  limit=MAX_REQUEST_BYTES)
        self._task = asyncio.get_running_loop().create_task(self._sample_forever())
        log.info("status page on http://%s:%d/", host, self.port or port)
        if self._token is None and not is_loopback(host):
            log.warning("status page on %s without --http-token-file: anyone who reaches it "
                        "sees the tunnel's paths and counters", host)

    @property
    def port(self) -> int | None:
        """The bound port (useful with port 0)."""
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _sample_forever(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            try:
                self.sample()
            except Exception as exc:  # keep sampling: one odd snapshot must not stop the rates
                self._errors.log(logging.ERROR, "sample", "status sample failed: %r", exc)
            deadline += self.sampler.interval_s
            delay = deadline - loop.time()
            if delay < 0:  # the loop was busy for a whole interval: skip, do not catch up
                deadline = loop.time()
                delay = 0.0
            await asyncio.sleep(delay)

    # ------------------------------------------------------------------ data

    def _snapshot(self) -> Snapshot | None:
        try:
            snap = self._snapshot_fn()
        except Exception as exc:  # a bug in the snapshot must not kill the status page
            self._errors.log(logging.ERROR, "snapshot", "status snapshot failed: %r", exc)
            return None
        return snap if isinstance(snap, dict) else None

    def sample(self, now: float | None = None) -> None:
        """Take one sample (the task calls this every interval; tests call it by hand)."""
        snap = self._snapshot()
        if snap is not None:
            self.sampler.add(self._clock() if now is None else now, snap)

    def model(self) -> StatusModel:
        """The model of the current snapshot with the sampler's rates and state ages."""
        return self._model_of(self._snapshot() or {})

    def _model_of(self, snap: Snapshot) -> StatusModel:
        paths = snap.get("paths")
        states: dict[str, str] = {}
        for raw in paths if isinstance(paths, list) else ():
            key = raw_path_key(raw) if isinstance(raw, Mapping) else None
            if key is not None:
                states[key] = as_text(raw.get("state")) or "unknown"
        since = self.sampler.since(self._clock(), states)
        return build_model(snap, self.sampler.rates(), since)

    # ------------------------------------------------------------------ requests

    def authorized(self, query: Mapping[str, list[str]], headers: Mapping[str, str]) -> bool:
        if self._token is None:
            return True
        offered = [v.encode() for v in query.get("token", [])[:1]]
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            offered.append(value.strip().encode())
        # compare_digest on every offer: no early exit that would time the token
        results = [hmac.compare_digest(o, self._token) for o in offered]
        return any(results)

    def render(self, target: str, headers: Mapping[str, str] | None = None) -> Response:
        """The response to ``GET target``; ``headers`` keys in lower case."""
        try:
            parts = urlsplit(target)
            query = parse_qs(parts.query, max_num_fields=16)
        except ValueError:  # too many fields, a bad IPv6 literal: the client's fault
            return plain_response(400, "bad request\n")
        if not self.authorized(query, headers or {}):
            return plain_response(401, "a token is required: Authorization: Bearer T or ?token=T\n",
                          {"WWW-Authenticate": 'Bearer realm="ratbond"'})
        route = parts.path
        if route == "/":
            token = query.get("token", [None])[0]
            return Response(200, "text/html; charset=utf-8", self._dashboard.render(token),
                            {"Content-Security-Policy": self._dashboard.csp})
        if route == "/status.schema.json":
            return Response(200, JSON_TYPE, dump_json(json_schema()))
        if route == "/history.json":
            after = _float_or_none(query.get("since", [""])[0])
            return Response(200, JSON_TYPE, dump_json(self.sampler.history(after)))
        if route not in ("/status", "/status.txt", "/status.json", "/metrics"):
            return plain_response(404, "not found\n")
        snap = self._snapshot()
        if snap is None:
            return plain_response(503, "status snapshot unavailable\n")
        model = self._model_of(snap)
        if route == "/status.json":
            return Response(200, JSON_TYPE, dump_json(to_dict(model)))
        if route == "/metrics":
            registry = CollectorRegistry(auto_describe=False)  # over this very model
            registry.register(ModelCollector(lambda: model))
            return Response(200, CONTENT_TYPE_LATEST, generate_latest(registry))
        return Response(200, TEXT_TYPE, render_text(model).encode())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"),
                                             timeout=_REQUEST_TIMEOUT_S)
            method, response = self._respond(request)
            head = [f"HTTP/1.0 {response.status} {_REASONS[response.status]}",
                    f"Content-Type: {response.content_type}",
                    f"Content-Length: {len(response.body)}", "Connection: close"]
            head += [f"{k}: {v}" for k, v in {**_COMMON_HEADERS, **response.headers}.items()]
            data = ("\r\n".join(head) + "\r\n\r\n").encode()
            writer.write(data if method == "HEAD" else data + response.body)
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass
        except Exception as exc:  # a bug here must not reach the runtime's event loop
            self._errors.log(logging.ERROR, "request", "status request failed: %r", exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _respond(self, request: bytes) -> tuple[str, Response]:
        lines = request.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return "", plain_response(400, "bad request\n")
        method, target = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            return method, plain_response(405, "only GET and HEAD\n", {"Allow": "GET, HEAD"})
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return method, self.render(target, headers)


def dump_json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()


def _float_or_none(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
