"""Key schedule and handshake pinned by vectors, cross-checked by independent computations.

The pinned hex values were computed once from this implementation; the cross-checks redo
the same derivations with :mod:`cryptography`'s HKDF and AEAD, written out independently.
"""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from hypothesis import given
from hypothesis import strategies as st

from ratbond.crypto import ChannelMode, Limits
from ratbond.crypto.handshake import PROTOCOL_NAME, InitiatorHandshake, ResponderHandshake
from ratbond.crypto.kdf import hkdf, hkdf_expand, mac_key, path_key
from ratbond.crypto.messages import compute_mac, prologue
from ratbond.crypto.transport import KeySet
from ratbond.wire import HEADER_SIZE

PSK = bytes(range(32))
PROLOGUE = prologue(2, 1)
INIT_EPHEMERAL = bytes([7]) * 32
RESP_EPHEMERAL = bytes([9]) * 32
PAYLOAD = b"P" * 20


def _hkdf_reference(salt: bytes, ikm: bytes, count: int) -> list[bytes]:
    out = HKDF(algorithm=SHA256(), length=32 * count, salt=salt, info=b"").derive(ikm)
    return [out[i * 32:(i + 1) * 32] for i in range(count)]


@given(st.binary(min_size=0, max_size=64), st.binary(max_size=64), st.integers(1, 3))
def test_hkdf_matches_cryptography(salt: bytes, ikm: bytes, count: int) -> None:
    assert list(hkdf(salt, ikm, count)) == _hkdf_reference(salt, ikm, count)


@given(st.binary(min_size=32, max_size=32), st.binary(max_size=40))
def test_hkdf_expand_matches_cryptography(prk: bytes, info: bytes) -> None:
    assert hkdf_expand(prk, info) == HKDFExpand(SHA256(), 32, info).derive(prk)


def test_derived_keys_are_pinned() -> None:
    assert mac_key(PSK).hex() == (
        "c21eafbc886864ecb5a9182a044e750d0f4d0fba77a281ea1bbe3ee52ba95ac5")
    assert path_key(PSK, b"i2r", 5).hex() == (
        "3d0dc15f3de36d47ae2de411950f9ec783e24525e87198fb2623f94179bd8d89")
    # The same value written out with cryptography's HKDF-Expand and the documented label.
    info = b"ratbond v1 path key i2r" + (5).to_bytes(2, "big")
    assert path_key(PSK, b"i2r", 5) == HKDFExpand(SHA256(), 32, info).derive(PSK)
    assert path_key(PSK, b"i2r", 5) != path_key(PSK, b"r2i", 5) != path_key(PSK, b"r2i", 6)


def _handshake() -> tuple[InitiatorHandshake, bytes, bytes, bytes]:
    initiator = InitiatorHandshake(PSK, PROLOGUE, PAYLOAD, INIT_EPHEMERAL)
    responder = ResponderHandshake.read_initiation(PSK, PROLOGUE, initiator.body)
    assert responder is not None and responder.payload == PAYLOAD
    answer = responder.write_response(0x01020304, b"LOGI", RESP_EPHEMERAL)
    assert answer is not None
    body, secrets = answer
    read = initiator.read_response(0x01020304, body)
    assert read is not None and read[0] == b"LOGI" and read[1] == secrets
    return initiator, body, secrets.initiator_to_responder, secrets.responder_to_initiator


def test_handshake_is_pinned() -> None:
    initiator, response, i2r, r2i = _handshake()
    assert initiator.body.hex() == (
        "13be4feaeaf204c7fd3358fc9c00721881d174278128227ec674f37f7fe97b6d"
        "c619eeefd5f824cd088586127988a4c459bc75526f5fc74414ba9eb7fe0237e2866fffd5")
    assert response.hex() == (
        "57db4b359f23ae5e146e4e2512056704722506348c150c14753d0c933d04d421"
        "c8184481fd2d42d40510eac22cee25a329e28c64")
    assert i2r.hex() == "42d268f27ed883fe46a6292dd978c817fd886ebf2248778cf217ec04b051503a"
    assert r2i.hex() == "d9bbd3125cdc34f9751f07e3bc82fecd445cb2d08ecc1204435d61f611c45d0c"


def test_first_message_recomputed_independently() -> None:
    """Noise NNpsk0 message 1, written out with cryptography's HKDF."""
    ephemeral = X25519PrivateKey.from_private_bytes(INIT_EPHEMERAL).public_key()
    e_pub = ephemeral.public_bytes_raw()
    h = ck = hashlib.sha256(PROTOCOL_NAME).digest()
    h = hashlib.sha256(h + PROLOGUE).digest()
    ck, temp, key = _hkdf_reference(ck, PSK, 3)
    h = hashlib.sha256(h + temp).digest()
    h = hashlib.sha256(h + e_pub).digest()
    ck, key = _hkdf_reference(ck, e_pub, 2)
    sealed = ChaCha20Poly1305(key).encrypt(bytes(12), PAYLOAD, h)
    initiator = InitiatorHandshake(PSK, PROLOGUE, PAYLOAD, INIT_EPHEMERAL)
    assert initiator.body == e_pub + sealed


def test_wrong_psk_or_prologue_fails() -> None:
    initiator = InitiatorHandshake(PSK, PROLOGUE, PAYLOAD, INIT_EPHEMERAL)
    assert ResponderHandshake.read_initiation(bytes(32), PROLOGUE, initiator.body) is None
    assert ResponderHandshake.read_initiation(PSK, prologue(1, 1), initiator.body) is None
    _, response, _, _ = _handshake()
    assert initiator.read_response(0x01020305, response) is None  # session id is bound


def test_low_order_point_is_refused() -> None:
    initiator = InitiatorHandshake(PSK, PROLOGUE, PAYLOAD, INIT_EPHEMERAL)
    assert initiator.read_response(1, bytes(32) + bytes(20)) is None


@pytest.mark.parametrize(("cipher", "aead"), [("chacha20-poly1305", ChaCha20Poly1305),
                                                ("aes-256-gcm", AESGCM)])
@pytest.mark.parametrize("mode", [ChannelMode.ENCRYPTED, ChannelMode.AUTHENTICATED])
def test_data_datagram_recomputed_independently(cipher: str, aead: type, mode: ChannelMode
                                                ) -> None:
    _, _, i2r, r2i = _handshake()
    from ratbond.crypto.handshake import TrafficSecrets

    keys = KeySet(session=0x0A0B0C0D, logical=1, secrets=TrafficSecrets(i2r, r2i),
                  initiator=True, mode=mode, cipher=cipher, created=0.0, limits=Limits())
    keys.seal(5, b"first")
    datagram = keys.seal(5, b"second")
    header = bytes.fromhex("01 03 0005 0a0b0c0d 0000000000000001")
    assert datagram[:HEADER_SIZE] == header
    key = HKDFExpand(SHA256(), 32, b"ratbond v1 path key i2r\x00\x05").derive(i2r)
    nonce = bytes.fromhex("0a0b0c0d 0000000000000001")
    if mode is ChannelMode.ENCRYPTED:
        assert datagram[HEADER_SIZE:] == aead(key).encrypt(nonce, b"second", header)
    else:
        tag = aead(key).encrypt(nonce, b"", header + b"second")
        assert datagram == header + b"second" + tag


def test_handshake_mac_is_keyed_blake2s() -> None:
    key = mac_key(PSK)
    assert compute_mac(key, b"datagram") == hashlib.blake2s(
        b"datagram", key=key, digest_size=16).digest()
