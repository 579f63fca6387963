"""Start-up failures the user can fix: one line with cause and fix, exit 1, no traceback."""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest
from pyroute2.netlink.exceptions import NetlinkError

import ratbond.runtime.client
import ratbond.runtime.server
from ratbond.cli import main
from ratbond.config import ClientSettings, ServerSettings, client_settings, server_settings
from ratbond.linux.sockets import open_listen_socket
from ratbond.linux.tun import TunError
from ratbond.startup_errors import explain_startup_error

ROOT_HINT = ("needs root or CAP_NET_ADMIN (run it as root, or grant the capability, e.g. "
             "AmbientCapabilities=CAP_NET_ADMIN in its systemd unit)")
CLIENT = client_settings({"connect-addr": "h:1", "tun-name": "rb0"}, {})
SERVER = server_settings({"listen-addr": "0.0.0.0:4000", "tunnel-id": "661"}, {})


def busy_tun() -> TunError:
    return TunError(errno.EBUSY, "cannot create TUN 'rb0': Device or resource busy")


@pytest.mark.parametrize(
    ("exc", "settings", "line"),
    [
        (busy_tun(), CLIENT,
         "TUN rb0 is busy: is another ratbond running? (stop it, or give this one another "
         "--tun-name)"),
        (TunError(errno.EBUSY, "x"), SERVER,
         "TUN tun661 is busy: is another ratbond running? (stop it, or give this one another "
         "--tunnel-id)"),
        (TunError(errno.EPERM, "cannot create TUN 'rb0': Operation not permitted"), CLIENT,
         f"cannot create TUN 'rb0': Operation not permitted: ratbond {ROOT_HINT}"),
        (PermissionError(errno.EACCES, "Permission denied", "/dev/net/tun"), CLIENT,
         f"Permission denied (/dev/net/tun): ratbond {ROOT_HINT}"),
        (NetlinkError(errno.EPERM, "Operation not permitted"), CLIENT,
         f"Operation not permitted: ratbond {ROOT_HINT}"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/dev/net/tun"), SERVER,
         "/dev/net/tun is missing: load the tun module (modprobe tun), or in a container pass "
         "the device in (e.g. --device /dev/net/tun --cap-add NET_ADMIN)"),
        (OSError(errno.EADDRINUSE, "error while attempting to bind on address "
                 "('127.0.0.1', 8091): address already in use"), CLIENT,
         "--http-listen-addr 127.0.0.1:8091: address in use; choose another or 'disable'"),
        (OSError(errno.EADDRINUSE, "error while attempting to bind on address "
                 "('127.0.0.1', 8091): address already in use"), SERVER,
         "--http-listen-addr 127.0.0.1:8091: address in use; choose another or 'disable'"),
        (OSError(errno.EADDRINUSE, "Address already in use"), SERVER,
         "--listen-addr 0.0.0.0:4000: address in use: is another ratbond server running? "
         "choose another port"),
        (OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"), SERVER,
         "--listen-addr 0.0.0.0:4000: not an address of this machine; use 0.0.0.0 (every "
         "IPv4 address) or [::] (dual stack)"),
        (PermissionError(errno.EACCES, "Permission denied"),
         server_settings({"listen-addr": "0.0.0.0:500"}, {}),
         "--listen-addr 0.0.0.0:500: port 500 needs root or CAP_NET_BIND_SERVICE; choose a "
         "port above 1023"),
        (PermissionError(errno.EACCES, "error while attempting to bind on address "
                         "('127.0.0.1', 80): permission denied"),
         server_settings({"http-listen-addr": "127.0.0.1:80"}, {}),
         "--http-listen-addr 127.0.0.1:80: port 80 needs root or CAP_NET_BIND_SERVICE; choose "
         "a port above 1023"),
        (TunError(errno.EINVAL, "cannot create TUN 'rb0': Invalid argument"), CLIENT,
         "cannot create TUN 'rb0': Invalid argument"),
    ],
)
def test_known_failures_become_one_line(exc: BaseException, settings: ClientSettings,
                                        line: str) -> None:
    assert explain_startup_error(exc, settings) == line


def test_unknown_failures_are_left_alone() -> None:
    assert explain_startup_error(ValueError("a bug"), CLIENT) is None
    assert explain_startup_error(OSError(errno.EIO, "I/O error"), CLIENT) is None
    assert explain_startup_error(KeyError("x"), SERVER) is None


def test_cause_hidden_behind_a_cleanup_error_is_found() -> None:
    try:
        try:
            raise busy_tun()
        except TunError:
            raise AttributeError("'NoneType' object has no attribute 'close'") from None
    except AttributeError as outer:
        # `from None` hides the context from tracebacks but keeps __context__ set
        line = explain_startup_error(outer, CLIENT)
    assert line is not None and line.startswith("TUN rb0 is busy")


def test_real_bind_failures_are_told_apart() -> None:
    """The real exceptions asyncio (status page) and the UDP listener raise, on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def start() -> None:
            await asyncio.start_server(lambda _r, _w: None, "127.0.0.1", port)

        with pytest.raises(OSError) as info:
            asyncio.run(start())
        settings = server_settings({"http-listen-addr": f"127.0.0.1:{port}"}, {})
        assert explain_startup_error(info.value, settings) == (
            f"--http-listen-addr 127.0.0.1:{port}: address in use; choose another or "
            "'disable'")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken_udp:
        taken_udp.bind(("127.0.0.1", 0))
        udp_port = taken_udp.getsockname()[1]
        with pytest.raises(OSError) as info:
            open_listen_socket("127.0.0.1", udp_port)
        settings = server_settings({"listen-addr": f"127.0.0.1:{udp_port}"}, {})
        assert explain_startup_error(info.value, settings) == (
            f"--listen-addr 127.0.0.1:{udp_port}: address in use: is another ratbond server "
            "running? choose another port")


def _raise_busy(_settings: ClientSettings) -> int:
    raise busy_tun()


def test_main_prints_one_line_and_exits_1(capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratbond.runtime.client, "run_client", _raise_busy)
    assert main(["client", "--connect-addr=h:1", "--tun-name=rb0"]) == 1
    err = capsys.readouterr().err
    assert err == ("ratbond client: TUN rb0 is busy: is another ratbond running? (stop it, or "
                   "give this one another --tun-name)\n")


def test_debug_adds_the_traceback(capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratbond.runtime.client, "run_client", _raise_busy)
    assert main(["client", "--connect-addr=h:1", "--tun-name=rb0", "--debug"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert "TunError" in err
    assert err.endswith("ratbond client: TUN rb0 is busy: is another ratbond running? (stop "
                        "it, or give this one another --tun-name)\n")


def test_unknown_failure_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_settings: ServerSettings) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(ratbond.runtime.server, "run_server", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["server"])
