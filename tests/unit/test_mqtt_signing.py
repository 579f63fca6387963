"""Signed settings: what a router accepts, and each way a document is refused."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ratbond.mqtt import signing
from ratbond.mqtt.signing import Refused, SettingsDocument, SettingsVerifier, sign

NOW = 1_800_000_000.0
SETTINGS = {"connect-addr": "192.0.2.1:12345", "mux": 2}


def doc(version: int = 1, router: str = "r1", expires: float = NOW + 3600,
        settings: dict[str, object] | None = None) -> SettingsDocument:
    return SettingsDocument(router, version, NOW - 10, expires, dict(settings or SETTINGS))


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def verifier(key: Ed25519PrivateKey) -> SettingsVerifier:
    return SettingsVerifier(key.public_key(), "r1")


def reason(result: object) -> str:
    assert isinstance(result, Refused), result
    return result.reason


def test_a_signed_document_for_this_router_is_accepted(key: Ed25519PrivateKey,
                                                       verifier: SettingsVerifier) -> None:
    result = verifier.check(sign(doc(), key), NOW)
    assert result == doc()
    assert verifier.accept(doc()) is True
    assert verifier.current == doc()


def test_unsigned_is_refused(verifier: SettingsVerifier) -> None:
    body = base64.b64encode(doc().to_json()).decode()
    assert reason(verifier.check(json.dumps({"document": body}).encode(), NOW)) == "unsigned"
    assert reason(verifier.check(json.dumps({"document": body, "signature": ""}).encode(),
                                 NOW)) == "unsigned"


def test_a_document_signed_by_another_key_is_refused(verifier: SettingsVerifier) -> None:
    forged = sign(doc(), Ed25519PrivateKey.generate())
    assert reason(verifier.check(forged, NOW)) == "bad-signature"


def test_a_tampered_document_is_refused(key: Ed25519PrivateKey,
                                        verifier: SettingsVerifier) -> None:
    envelope = json.loads(sign(doc(), key))
    evil = doc(settings={"connect-addr": "203.0.113.66:12345"})
    envelope["document"] = base64.b64encode(evil.to_json()).decode()
    assert reason(verifier.check(json.dumps(envelope).encode(), NOW)) == "bad-signature"


def test_a_document_for_another_router_is_refused(key: Ed25519PrivateKey,
                                                  verifier: SettingsVerifier) -> None:
    assert reason(verifier.check(sign(doc(router="r2"), key), NOW)) == "other-router"


def test_an_expired_document_is_refused(key: Ed25519PrivateKey,
                                        verifier: SettingsVerifier) -> None:
    assert reason(verifier.check(sign(doc(expires=NOW - 1), key), NOW)) == "expired"


def test_an_older_version_is_refused(key: Ed25519PrivateKey, verifier: SettingsVerifier) -> None:
    verifier.accept(doc(version=5))
    assert reason(verifier.check(sign(doc(version=4), key), NOW)) == "older-version"
    newer = doc(version=6, settings={"connect-addr": "192.0.2.9:1"})
    assert verifier.check(sign(newer, key), NOW) == newer


def test_the_same_version_is_accepted_only_with_the_same_settings(
        key: Ed25519PrivateKey, verifier: SettingsVerifier) -> None:
    verifier.accept(doc(version=3))
    resigned = doc(version=3, expires=NOW + 7200)
    assert verifier.check(sign(resigned, key), NOW) == resigned
    assert verifier.accept(resigned) is False  # nothing to restart
    other = doc(version=3, settings={"connect-addr": "203.0.113.66:12345"})
    assert reason(verifier.check(sign(other, key), NOW)) == "reused-version"


@pytest.mark.parametrize("payload", [b"", b"not json", b"[1]", b'{"document": 1, '
                                     b'"signature": 2}', b'{"document": "@@", "signature": "@@"}',
                                     b"x" * (signing.MAX_ENVELOPE_BYTES + 1)])
def test_garbage_is_malformed_never_an_exception(payload: bytes,
                                                 verifier: SettingsVerifier) -> None:
    assert reason(verifier.check(payload, NOW)) == "malformed"


def test_a_signed_non_document_is_malformed(key: Ed25519PrivateKey,
                                            verifier: SettingsVerifier) -> None:
    body = json.dumps({"router": "r1", "version": "1"}).encode()
    envelope = json.dumps({"document": base64.b64encode(body).decode(),
                           "signature": base64.b64encode(key.sign(body)).decode()}).encode()
    assert reason(verifier.check(envelope, NOW)) == "malformed"


def test_key_files_round_trip_and_are_never_overwritten(tmp_path: Path) -> None:
    private = tmp_path / "fleet.key"
    public = signing.write_keypair(private)
    assert public == tmp_path / "fleet.key.pub"
    assert private.stat().st_mode & 0o777 == 0o600
    key = signing.load_private_key(private)
    verifier = SettingsVerifier(signing.load_public_key(public), "r1")
    assert verifier.check(sign(doc(), key), NOW) == doc()
    with pytest.raises(signing.KeyFileError, match="exists"):
        signing.write_keypair(private)


def test_wrong_key_files_are_named(tmp_path: Path) -> None:
    private = tmp_path / "fleet.key"
    public = signing.write_keypair(private)
    with pytest.raises(signing.KeyFileError, match="not a PEM public key"):
        signing.load_public_key(private)
    with pytest.raises(signing.KeyFileError, match="not a PEM private key"):
        signing.load_private_key(public)
    with pytest.raises(signing.KeyFileError, match="cannot read"):
        signing.load_public_key(tmp_path / "missing.pub")
