"""Start-up failures a user can fix end in one line and exit code 1, for real.

    namespace <prefix>cli (nothing but lo; no WAN, so the clients just wait for one)
      ratbond client #1 --tun-name=rbdup0 --http-listen-addr=127.0.0.1:18091   keeps running
      ratbond client #2 --tun-name=rbdup0                                       exit 1: busy
      ratbond client #3 --tun-name=rbdup1 --http-listen-addr=127.0.0.1:18091   exit 1: in use
    namespace <prefix>nocap: a client without CAP_NET_ADMIN (setpriv)            exit 1: root
    namespace <prefix>notun: a client with /dev/net/tun hidden (mount ns)       exit 1: missing
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time

import pytest

from ratbond.lab.netns import Namespace, list_namespaces, namespace_group, stop_process

pytestmark = pytest.mark.root

HTTP = "127.0.0.1:18091"


def ratbond_client(tun: str, http: str) -> list[str]:
    return [sys.executable, "-m", "ratbond", "client", "--nosyslog", "--secret=e2e-test",
            "--connect-addr=192.0.2.1:12345", f"--tun-name={tun}", f"--http-listen-addr={http}"]


def wait_until_listening(ns: Namespace, first: subprocess.Popen[bytes], port: int) -> None:
    """Readiness: the TUN exists and the status port answers (the last step of start())."""
    deadline = time.monotonic() + 20
    probe = ("import socket,sys; s=socket.socket(); s.settimeout(1); "
             f"sys.exit(s.connect_ex(('127.0.0.1', {port})))")
    while time.monotonic() < deadline:
        assert first.poll() is None, first.communicate()[1].decode(errors="replace")
        tun_up = ns.run("ip", "link", "show", "rbdup0", check=False).returncode == 0
        if tun_up and ns.run(sys.executable, "-c", probe, check=False).returncode == 0:
            return
        time.sleep(0.1)
    raise AssertionError("the first client never finished starting")


def test_second_instance_and_taken_status_port_exit_1_with_one_line() -> None:
    with namespace_group() as group:
        prefix = group.prefix
        ns = group.add("cli")
        first = ns.popen(*ratbond_client("rbdup0", HTTP), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
        try:
            wait_until_listening(ns, first, 18091)
            second = ns.run(*ratbond_client("rbdup0", "disable"), check=False, timeout=60)
            third = ns.run(*ratbond_client("rbdup1", HTTP), check=False, timeout=60)
            assert first.poll() is None  # the running instance is left alone
            gone = ns.run("ip", "link", "show", "rbdup1", check=False).returncode != 0
        finally:
            stop_process(first)
    busy = second.stderr.decode(errors="replace")
    in_use = third.stderr.decode(errors="replace")
    assert second.returncode == 1, busy
    assert "Traceback" not in busy
    assert busy.splitlines()[-1] == ("ratbond client: TUN rbdup0 is busy: is another ratbond "
                                     "running? (stop it, or give this one another --tun-name)")
    assert busy.count("is busy") == 1
    assert third.returncode == 1, in_use
    assert "Traceback" not in in_use
    assert in_use.splitlines()[-1] == (f"ratbond client: --http-listen-addr {HTTP}: address in "
                                       "use; choose another or 'disable'")
    assert gone  # the failed third client removed the TUN it had created
    assert list_namespaces(prefix) == []


def test_without_cap_net_admin_says_what_it_needs() -> None:
    """Root without CAP_NET_ADMIN (dropped with setpriv) is refused by TUNSETIFF: EPERM."""
    with namespace_group() as group:
        ns = group.add("nocap")
        result = ns.run("setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin",
                        *ratbond_client("rbcap0", "disable"), check=False, timeout=60)
    err = result.stderr.decode(errors="replace")
    assert result.returncode == 1, err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (
        "ratbond client: cannot create TUN 'rbcap0': Operation not permitted: ratbond needs "
        "root or CAP_NET_ADMIN (run it as root, or grant the capability, e.g. "
        "AmbientCapabilities=CAP_NET_ADMIN in its systemd unit)")


def test_missing_dev_net_tun_says_how_to_get_it() -> None:
    """/dev/net/tun hidden under a tmpfs in a private mount namespace: ENOENT at open."""
    with namespace_group() as group:
        ns = group.add("notun")
        command = shlex.join(ratbond_client("rbnotun0", "disable"))
        result = ns.run("unshare", "--mount", "--propagation", "private", "sh", "-c",
                        f"mount -t tmpfs none /dev/net && exec {command}", check=False,
                        timeout=60)
    err = result.stderr.decode(errors="replace")
    assert result.returncode == 1, err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (
        "ratbond client: /dev/net/tun is missing: load the tun module (modprobe tun), or in a "
        "container pass the device in (e.g. --device /dev/net/tun --cap-add NET_ADMIN)")
