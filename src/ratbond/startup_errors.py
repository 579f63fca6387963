"""Start-up failures a user can fix, told in one line: the cause and the fix.

``ratbond client`` / ``server`` fail at start for a few reasons that are the user's to fix
(a second instance holds the TUN, the status port is taken, not root, no ``/dev/net/tun``).
A traceback says none of that, so :func:`explain_startup_error` turns those exceptions into
one sentence; anything it does not recognise is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator

from ratbond.config import ClientSettings, CommonSettings, ServerSettings
from ratbond.linux.tun import TUN_PATH, TunError

#: asyncio's wording when ``start_server`` cannot bind: "... bind on address ('h', port): ...".
_ASYNCIO_BIND = re.compile(r"bind on address \('?([^',]*)'?, (\d+)")

_ROOT_HINT = "needs root or CAP_NET_ADMIN (run it as root, or grant the capability, e.g. " \
             "AmbientCapabilities=CAP_NET_ADMIN in its systemd unit)"


def explain_startup_error(exc: BaseException, settings: CommonSettings) -> str | None:
    """One line naming the cause and the fix, or ``None`` when ``exc`` is not a known
    start-up failure.  The whole chain is searched: cleanup after a failed start may raise
    a second exception whose context is the real cause."""
    for cause in _chain(exc):
        line = _explain_one(cause, settings)
        if line is not None:
            return line
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def _errno_of(exc: BaseException) -> int | None:
    if isinstance(exc, OSError):
        return exc.errno
    code = getattr(exc, "code", None)  # pyroute2's NetlinkError carries the errno as .code
    if type(exc).__name__ == "NetlinkError" and isinstance(code, int):
        return code
    return None


def _tun_name(settings: CommonSettings) -> tuple[str, str]:
    """The TUN this end opens and the flag that renames it."""
    if isinstance(settings, ClientSettings):
        return settings.client_tun_name, "--tun-name"
    return settings.server_tun_name, "--tunnel-id"


def _explain_one(exc: BaseException, settings: CommonSettings) -> str | None:
    if getattr(exc, "user_facing", False):  # errors that are already the line
        return str(exc)
    code = _errno_of(exc)
    if code is None:
        return None
    filename = exc.filename if isinstance(exc, OSError) else None
    tun, rename_flag = _tun_name(settings)
    if (code in (errno.ENOENT, errno.ENODEV, errno.ENXIO)
            and (filename == TUN_PATH or isinstance(exc, TunError))):
        return (f"{TUN_PATH} is missing: load the tun module (modprobe tun), or in a "
                f"container pass the device in (e.g. --device {TUN_PATH} --cap-add NET_ADMIN)")
    if code == errno.EBUSY:
        return (f"TUN {tun} is busy: is another ratbond running? (stop it, or give this one "
                f"another {rename_flag})")
    if code in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
        return _address_problem(code, str(exc), settings)
    if code in (errno.EPERM, errno.EACCES):
        bound = _ASYNCIO_BIND.search(str(exc))
        if bound and int(bound.group(2)) < 1024:
            return (f"--http-listen-addr {settings.http_listen}: port {bound.group(2)} needs "
                    "root or CAP_NET_BIND_SERVICE; choose a port above 1023")
        if (code == errno.EACCES and isinstance(settings, ServerSettings) and not filename
                and not isinstance(exc, TunError) and settings.listen.port < 1024):
            return (f"--listen-addr {settings.listen}: port {settings.listen.port} needs root "
                    "or CAP_NET_BIND_SERVICE; choose a port above 1023")
        what = (exc.strerror if isinstance(exc, OSError) and exc.strerror
                else os.strerror(code))
        where = f" ({filename})" if filename else ""
        return f"{what}{where}: ratbond {_ROOT_HINT}"
    if isinstance(exc, TunError):
        return f"{exc.strerror or exc}"
    return None


def _address_problem(code: int, text: str, settings: CommonSettings) -> str:
    """Which of our addresses could not be bound: the status page's (a TCP bind through
    asyncio, whose message names the address) or the server's UDP ``--listen-addr``."""
    bound = _ASYNCIO_BIND.search(text)
    http = settings.http_listen
    is_http = (http is not None
               and ((bound is not None and int(bound.group(2)) == http.port)
                    or not isinstance(settings, ServerSettings)))
    if is_http:
        if code == errno.EADDRINUSE:
            return (f"--http-listen-addr {http}: address in use; choose another or "
                    "'disable'")
        return (f"--http-listen-addr {http}: not an address of this machine; choose one it "
                "has (127.0.0.1 or 0.0.0.0) or 'disable'")
    if isinstance(settings, ServerSettings):
        if code == errno.EADDRINUSE:
            return (f"--listen-addr {settings.listen}: address in use: is another ratbond "
                    "server running? choose another port")
        return (f"--listen-addr {settings.listen}: not an address of this machine; use "
                "0.0.0.0 (every IPv4 address) or [::] (dual stack)")
    return f"cannot bind: {text}"
