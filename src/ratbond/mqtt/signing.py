"""Signed settings: the fleet's Ed25519 key vouches for each router's settings document.

A router trusts exactly one public key, given at install (``--fleet-key``).  The broker
only carries bytes: a document it made up, replayed from an older version, meant for
another router, or past its expiry is refused, so a compromised broker cannot redirect a
router to its own server.  The signature covers the exact bytes of the document (canonical
JSON), so nothing needs re-encoding to verify.

Envelope (the message on ``ratbond/router/<id>/settings``)::

    {"document": "<base64 of the document's JSON>", "signature": "<base64 Ed25519>"}

Document: ``{"router": ID, "version": N, "issued": UNIX, "expires": UNIX,
"settings": {client TOML keys: values}}``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MAX_ENVELOPE_BYTES = 64 * 1024
DEFAULT_VALIDITY_S = 30 * 86400

#: Why a document was refused (one log line each, rate-limited, by the router).
UNSIGNED = "unsigned"
MALFORMED = "malformed"
BAD_SIGNATURE = "bad-signature"
OTHER_ROUTER = "other-router"
OLDER_VERSION = "older-version"
REUSED_VERSION = "reused-version"
EXPIRED = "expired"


class KeyFileError(ValueError):
    """A key file is missing, unreadable or not the right kind of key."""


@dataclass(frozen=True)
class SettingsDocument:
    router: str
    version: int
    issued: float
    expires: float
    settings: dict[str, Any]

    def to_json(self) -> bytes:
        return json.dumps({"router": self.router, "version": self.version,
                           "issued": self.issued, "expires": self.expires,
                           "settings": self.settings},
                          sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Refused:
    reason: str
    detail: str


# --------------------------------------------------------------------------- keys


def generate_keypair() -> tuple[bytes, bytes]:
    """(private PEM, public PEM) of a new fleet key."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def write_keypair(private_path: Path) -> Path:
    """Write the private key (mode 0600) and ``<path>.pub``; never overwrite."""
    public_path = private_path.with_name(private_path.name + ".pub")
    for path in (private_path, public_path):
        if path.exists():
            raise KeyFileError(f"{path} exists; not overwriting a fleet key")
    private, public = generate_keypair()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private)
    public_path.write_bytes(public)
    return public_path


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read the {what} {str(path)!r}: "
                           f"{exc.strerror or exc}") from None


def load_private_key(path: Path) -> Ed25519PrivateKey:
    data = _read(path, "fleet private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyFileError(f"{path} is not a PEM private key (make one with "
                           "'ratbond fleet genkey')") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    data = _read(path, "fleet public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise KeyFileError(f"{path} is not a PEM public key (the .pub file of "
                           "'ratbond fleet genkey')") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} is not an Ed25519 public key")
    return key


# --------------------------------------------------------------------------- sign, verify


def sign(document: SettingsDocument, key: Ed25519PrivateKey) -> bytes:
    """The envelope to publish for ``document``."""
    body = document.to_json()
    return json.dumps({"document": base64.b64encode(body).decode(),
                       "signature": base64.b64encode(key.sign(body)).decode()},
                      separators=(",", ":")).encode()


def _document(data: Any) -> SettingsDocument | None:
    if not isinstance(data, dict):
        return None
    router, version = data.get("router"), data.get("version")
    issued, expires, settings = data.get("issued"), data.get("expires"), data.get("settings")
    numbers = (issued, expires)
    if (not isinstance(router, str) or not isinstance(version, int)
            or isinstance(version, bool) or version < 0 or not isinstance(settings, dict)
            or not all(isinstance(n, int | float) and not isinstance(n, bool)
                       for n in numbers)):
        return None
    return SettingsDocument(router, version, float(issued), float(expires),  # type: ignore[arg-type]
                            settings)


def open_envelope(payload: bytes, key: Ed25519PublicKey) -> SettingsDocument | Refused:
    """The document if ``payload`` is well formed and signed by ``key``; else why not.
    Nothing in an unverified payload is trusted beyond its size."""
    if len(payload) > MAX_ENVELOPE_BYTES:
        return Refused(MALFORMED, f"{len(payload)} bytes, more than {MAX_ENVELOPE_BYTES}")
    try:
        envelope = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return Refused(MALFORMED, "not JSON")
    if not isinstance(envelope, dict):
        return Refused(MALFORMED, "not a JSON object")
    body_b64, sig_b64 = envelope.get("document"), envelope.get("signature")
    if sig_b64 is None or sig_b64 == "":
        return Refused(UNSIGNED, "no signature")
    if not isinstance(body_b64, str) or not isinstance(sig_b64, str):
        return Refused(MALFORMED, "document and signature must be base64 strings")
    try:
        body = base64.b64decode(body_b64, validate=True)
        signature = base64.b64decode(sig_b64, validate=True)
    except (binascii.Error, ValueError):
        return Refused(MALFORMED, "bad base64")
    try:
        key.verify(signature, body)
    except InvalidSignature:
        return Refused(BAD_SIGNATURE, "not signed by the fleet key this router trusts")
    try:
        document = _document(json.loads(body))
    except (ValueError, UnicodeDecodeError):
        document = None
    if document is None:
        return Refused(MALFORMED, "signed, but not a settings document")
    return document


class SettingsVerifier:
    """A router's gate: accepts a document only for ``router_id``, unexpired, and not older
    than the one it runs; the same version again is accepted only with the same settings
    (a re-signed copy with a later expiry)."""

    def __init__(self, key: Ed25519PublicKey, router_id: str) -> None:
        self.key = key
        self.router_id = router_id
        self.current: SettingsDocument | None = None

    def check(self, payload: bytes, now: float) -> SettingsDocument | Refused:
        opened = open_envelope(payload, self.key)
        if isinstance(opened, Refused):
            return opened
        doc = opened
        if doc.router != self.router_id:
            return Refused(OTHER_ROUTER, f"for router {doc.router!r}, not {self.router_id!r}")
        if doc.expires <= now:
            return Refused(EXPIRED, f"version {doc.version} expired {now - doc.expires:.0f} s ago")
        current = self.current
        if current is not None:
            if doc.version < current.version:
                return Refused(OLDER_VERSION, f"version {doc.version} is older than the "
                               f"running {current.version}")
            if doc.version == current.version and doc.settings != current.settings:
                return Refused(REUSED_VERSION, f"version {doc.version} with other settings")
        return doc

    def accept(self, document: SettingsDocument) -> bool:
        """Make ``document`` current; True if its settings differ (restart the client)."""
        changed = self.current is None or self.current.settings != document.settings
        self.current = document
        return changed
