"""Network namespaces the lab creates, runs commands in, and always removes.

Every namespace name starts with a per-run prefix (``rb<pid><random>-``) so parallel runs
never collide and cleanup can find exactly what this run made, even after a crash.  A test
run sets ``RATBOND_NETNS_TAG`` (inherited by its children) in place of ``rb``, so its
leftover check sees only the namespaces that run made, never a parallel run's.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

NETNS_DIR = Path("/run/netns")


class NetnsError(RuntimeError):
    """A namespace command failed; carries the command and its stderr."""


TAG_ENV = "RATBOND_NETNS_TAG"


def unique_prefix(tag: str | None = None) -> str:
    """A short prefix unique to this run (namespace names are limited in practice)."""
    tag = tag or os.environ.get(TAG_ENV) or "rb"
    return f"{tag}{os.getpid() % 100000}{secrets.token_hex(2)}-"


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 30.0,
         input_bytes: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(list(argv), capture_output=True, timeout=timeout, input=input_bytes,
                          check=False)
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)!r} failed ({proc.returncode}): "
                         f"{proc.stderr.decode(errors='replace').strip()}")
    return proc


class Namespace:
    """One named network namespace (``ip netns`` style, so ``ip netns exec`` works)."""

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def create(cls, name: str) -> Namespace:
        _run(["ip", "netns", "add", name])
        ns = cls(name)
        ns.run("ip", "link", "set", "lo", "up")
        return ns

    def exec_argv(self, *argv: str) -> list[str]:
        """The argv that runs ``argv`` inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 30.0,
            input_bytes: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return _run(self.exec_argv(*argv), check=check, timeout=timeout, input_bytes=input_bytes)

    def output(self, *argv: str, timeout: float = 30.0) -> str:
        return self.run(*argv, timeout=timeout).stdout.decode()

    def popen(self, *argv: str, **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a process inside; the caller stops it (see :func:`stop_process`)."""
        return subprocess.Popen(self.exec_argv(*argv), start_new_session=True,  # type: ignore[call-overload,no-any-return]
                                **kwargs)

    def pids(self) -> list[int]:
        proc = _run(["ip", "netns", "pids", self.name], check=False)
        return [int(p) for p in proc.stdout.split()]

    def delete(self) -> None:
        """Kill everything still running inside, then remove the namespace."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _run(["ip", "netns", "delete", self.name], check=False)

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
    """SIGTERM the process group, SIGKILL it if it lingers; returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    return proc.returncode


def list_namespaces(prefix: str) -> list[str]:
    """Names of existing namespaces starting with ``prefix``."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def delete_all(prefix: str) -> None:
    """Remove every namespace with this prefix (and whatever runs in it)."""
    for name in list_namespaces(prefix):
        Namespace(name).delete()


@contextlib.contextmanager
def namespace_group(prefix: str | None = None) -> Iterator[NamespaceGroup]:
    """Create namespaces through the yielded group; all are deleted on exit, always."""
    group = NamespaceGroup(prefix or unique_prefix())
    try:
        yield group
    finally:
        group.close()


class NamespaceGroup:
    """Namespaces sharing one prefix, removed together."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.members: dict[str, Namespace] = {}

    def add(self, role: str) -> Namespace:
        ns = Namespace.create(self.prefix + role)
        self.members[role] = ns
        return ns

    def close(self) -> None:
        for ns in reversed(list(self.members.values())):
            ns.delete()
        self.members.clear()
        delete_all(self.prefix)
