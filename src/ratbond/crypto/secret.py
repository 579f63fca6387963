"""The pre-shared secret: loading it from its sources and stretching it once at start.

The secret may come from ``--secret``, ``--secret-file`` or the ``RATBOND_SECRET``
environment variable, so it need not sit on a command line visible in ``ps``.  It is held in
a :class:`Secret` whose ``repr``/``str`` are redacted, so it cannot leak into logs, status
output or exception messages by accident.

Stretching: a passphrase is turned into the 32-byte PSK with scrypt (n=2**16, r=8, p=1:
~0.24 s and 64 MiB once at start on the 2-core test machine), so every offline guess against
captured handshakes costs the attacker the same.  The salt is fixed, versioned and public:
both ends must derive the same PSK before they have exchanged a byte, so there is nothing
per-peer to salt with, and a salt unique to ratbond (plus the version, so the parameters can
change later) already prevents reuse of tables built for other systems.  A per-deployment
salt would only help against an attacker attacking many ratbond deployments at once, at the
cost of a second value to configure; a strong secret (``openssl rand -base64 32``) makes the
question moot.

A secret that is exactly what ``ratbond genkey`` prints (44 characters of base64 encoding 32
bytes) is not stretched: 256 random bits gain nothing from scrypt, and a server with a
clients file would otherwise spend a quarter second and 64 MiB per client at every start.
It becomes the PSK through one HKDF-Expand under its own label, so the two derivations never
meet.  A passphrase shaped like that by hand skips the stretch too -- use ``genkey``.
"""

from __future__ import annotations

import base64
import hmac
import os
import stat
from collections.abc import Mapping
from typing import NoReturn

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ratbond.crypto.errors import SecretError
from ratbond.crypto.kdf import hkdf_expand

ENV_VAR = "RATBOND_SECRET"
PSK_SIZE = 32

SCRYPT_SALT = b"ratbond psk v1"
SCRYPT_N = 2**16
SCRYPT_R = 8
SCRYPT_P = 1


class Secret:
    """A secret value that never shows itself in ``repr``, ``str``, pickles or comparisons."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        if not isinstance(value, bytes):
            raise TypeError("Secret takes bytes")
        if not value:
            raise SecretError("the secret is empty")
        self._value = value

    def reveal(self) -> bytes:
        """The raw bytes; call only where they are consumed (the key stretch)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret(<redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value, other._value)

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret cannot be pickled")


def load_secret(
    secret: str | None, secret_file: str | None, env: Mapping[str, str]
) -> Secret | None:
    """The secret from ``--secret``, else ``--secret-file``, else ``RATBOND_SECRET``; ``None``
    when none is given.  Giving both flags is an error; an unreadable or empty source raises
    :class:`SecretError` naming the source (never the value)."""
    if secret is not None and secret_file is not None:
        raise SecretError("give either --secret or --secret-file, not both")
    if secret is not None:
        return _from_text(secret, "--secret")
    if secret_file is not None:
        return _from_file(secret_file)
    value = env.get(ENV_VAR)
    if value is not None:
        return _from_text(value, f"environment variable {ENV_VAR}")
    return None


def _from_text(text: str, source: str) -> Secret:
    if not text.strip():
        raise SecretError(f"the secret given by {source} is empty")
    return Secret(text.encode("utf-8"))


def _from_file(path: str) -> Secret:
    try:
        with open(path, "rb") as handle:
            data = handle.read(64 * 1024 + 1)
    except OSError as exc:
        raise SecretError(f"cannot read --secret-file {path!r}: {exc.strerror or exc}") from None
    if len(data) > 64 * 1024:
        raise SecretError(f"--secret-file {path!r} is larger than 64 KiB; is it the right file?")
    # A trailing newline is an editor's, not part of the secret; anything else is kept.
    data = data.rstrip(b"\r\n")
    if not data.strip():
        raise SecretError(f"--secret-file {path!r} is empty")
    return Secret(data)


#: Permission bits that let someone other than the owner read or replace a secret file.
_OPEN_BITS = stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH


def permission_warning(path: str, flag: str = "--secret-file") -> str | None:
    """A warning when ``path`` can be read or written by group or others, else ``None``.

    Like ssh with a private key, ratbond still starts (refusing would break running
    deployments) but says which file, its mode and the command that fixes it.
    """
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None  # unreadable files are reported by the loader itself
    if not mode & _OPEN_BITS:
        return None
    return (f"{flag} {path}: permissions {mode:04o} are too open (group or others can read "
            f"or change the secret); fix with: chmod 600 {path}")


_GENERATED_LABEL = b"ratbond v1 generated key psk"
_BASE64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def generated_key(value: bytes) -> bytes | None:
    """The 32 random bytes of a ``ratbond genkey`` secret, or ``None`` for anything else."""
    if len(value) != 44 or value[43:] != b"=" or not _BASE64.issuperset(value[:43]):
        return None
    raw = base64.b64decode(value, validate=True)
    return raw if len(raw) == PSK_SIZE else None


def stretch(secret: Secret) -> bytes:
    """The 32-byte PSK derived from ``secret``: scrypt (slow on purpose: call once at start),
    except for a ``ratbond genkey`` key, which is random enough as it is."""
    raw = generated_key(secret.reveal())
    if raw is not None:
        return hkdf_expand(raw, _GENERATED_LABEL)
    kdf = Scrypt(salt=SCRYPT_SALT, length=PSK_SIZE, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return kdf.derive(secret.reveal())
