"""systemd units under contrib/systemd and the sd_notify sender they rely on."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from ratbond.linux.sdnotify import Watchdog, notify, watchdog_interval

UNITS = Path(__file__).resolve().parents[2] / "contrib" / "systemd"
ROLES = ("client", "server")


def _unit(role: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in (UNITS / f"ratbond-{role}.service").read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


@pytest.mark.parametrize("role", ROLES)
def test_unit_has_the_hardening_and_restart_policy(role: str) -> None:
    unit = _unit(role)
    assert unit["Type"] == ["notify"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["After"] == unit["Wants"] == ["network-online.target"]
    assert unit["AmbientCapabilities"] == unit["CapabilityBoundingSet"] == \
        ["CAP_NET_ADMIN CAP_NET_RAW"]
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["ProtectHome"] == ["yes"]
    assert unit["WantedBy"] == ["multi-user.target"]
    assert unit["ExecStart"] == [f"/usr/local/bin/ratbond {role} --config "
                                 f"/etc/ratbond/{role}.toml"]
    assert "WatchdogSec" in unit


@pytest.mark.parametrize("role", ROLES)
def test_systemd_analyze_verify_accepts_the_unit(role: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart's binary exists: point it at an executable that does.
    exe = tmp_path / "ratbond"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    unit = tmp_path / f"ratbond-{role}.service"
    unit.write_text((UNITS / unit.name).read_text().replace("/usr/local/bin/ratbond", str(exe)))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                          check=False, timeout=60)
    problems = [line for line in done.stderr.splitlines() if unit.name in line]
    assert done.returncode == 0 and not problems, done.stderr


def _listener(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    return sock, path


def test_notify_sends_to_the_socket_and_is_silent_without_one(tmp_path: Path) -> None:
    sock, path = _listener(tmp_path)
    with sock:
        assert notify("READY=1", {"NOTIFY_SOCKET": path})
        assert sock.recv(64) == b"READY=1"
    assert not notify("READY=1", {})
    assert not notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")})  # never raises


def test_watchdog_interval_is_half_the_timeout_and_only_for_us() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None


def test_watchdog_pings_from_the_loop_and_says_stopping(tmp_path: Path) -> None:
    sock, path = _listener(tmp_path)
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "40000"}  # a ping every 20 ms

    async def run() -> Watchdog:
        dog = Watchdog(asyncio.get_running_loop(), env)
        dog.start()
        await asyncio.sleep(0.1)
        dog.stop()
        return dog

    with sock:
        dog = asyncio.run(run())
        got = []
        sock.settimeout(0.2)
        try:
            while True:
                got.append(sock.recv(64))
        except TimeoutError:
            pass
    assert got[0] == b"READY=1" and got[-1] == b"STOPPING=1"
    assert got.count(b"WATCHDOG=1") == dog.pings >= 3
