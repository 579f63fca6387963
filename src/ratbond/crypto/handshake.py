"""The handshake's cryptography: a Noise ``NNpsk0``-shaped exchange over X25519.

Pattern (initiator = client, responder = server, both hold the 32-byte stretched PSK)::

    -> psk, e          [payload: timestamp, client id, session to resume]
    <- e, ee           [payload: logical session id]

Why this shape:

* **Mutual proof of the PSK.**  The PSK is mixed into the chaining key before anything is
  encrypted, so the initiator's payload only decrypts for a holder of the PSK, and the
  responder's payload is sealed under a key depending on the PSK *and* the fresh DH.  The
  initiator's proof alone can be replayed (it depends on nothing the responder chose), hence
  the timestamp in it and the key confirmation rule in the server: a session only counts once
  the initiator has sent authenticated data under the new keys, which needs the DH.
* **Forward secrecy.**  Both sides contribute a fresh X25519 ephemeral; the traffic keys come
  from ``ee``, so a later PSK leak does not open recorded sessions.
* **Binding.**  Every message is hashed into the transcript ``h`` (used as AEAD associated
  data), as are the mode/cipher prologue and the session id the responder assigned, so
  nothing can be swapped between messages.  Keys come from HKDF-SHA256 chained over the
  transcript; the two traffic secrets are the final split, one per direction.

No static keys are used: with a PSK shared by all clients, identities add nothing here.  The
handshake AEAD is always ChaCha20-Poly1305 with a zero nonce (every key is used once).
The cheap MAC that guards the server's expensive work lives in the channel, not here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ratbond.crypto.kdf import hkdf

PROTOCOL_NAME = b"ratbond handshake v1 NNpsk0 25519 ChaChaPoly SHA256 HKDF"
_ZERO_NONCE = bytes(12)


class _Transcript:
    """Noise's SymmetricState: chaining key, transcript hash and current handshake key."""

    __slots__ = ("ck", "h", "key")

    def __init__(self, prologue: bytes) -> None:
        self.ck = hashlib.sha256(PROTOCOL_NAME).digest()
        self.h = self.ck
        self.key: bytes | None = None
        self.mix_hash(prologue)

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, self.key = hkdf(self.ck, ikm, 2)

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp, self.key = hkdf(self.ck, ikm, 3)
        self.mix_hash(temp)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        assert self.key is not None
        sealed = ChaCha20Poly1305(self.key).encrypt(_ZERO_NONCE, plaintext, self.h)
        self.mix_hash(sealed)
        return sealed

    def decrypt_and_hash(self, sealed: bytes) -> bytes | None:
        assert self.key is not None
        try:
            plaintext = ChaCha20Poly1305(self.key).decrypt(_ZERO_NONCE, sealed, self.h)
        except InvalidTag:
            return None
        self.mix_hash(sealed)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        initiator_to_responder, responder_to_initiator = hkdf(self.ck, b"", 2)
        return initiator_to_responder, responder_to_initiator


@dataclass(frozen=True)
class TrafficSecrets:
    """The two per-direction secrets a finished handshake yields (per-path keys come later)."""

    initiator_to_responder: bytes
    responder_to_initiator: bytes

    def __repr__(self) -> str:
        return "TrafficSecrets(<redacted>)"


class InitiatorHandshake:
    """The initiator's half-finished handshake: writes message 1, reads message 2."""

    __slots__ = ("_ephemeral", "_state", "body")

    def __init__(self, psk: bytes, prologue: bytes, payload: bytes, ephemeral: bytes) -> None:
        """``body`` becomes ``e || sealed(payload)``; ``ephemeral`` is 32 random bytes."""
        self._ephemeral = X25519PrivateKey.from_private_bytes(ephemeral)
        public = self._ephemeral.public_key().public_bytes_raw()
        state = _Transcript(prologue)
        state.mix_key_and_hash(psk)
        state.mix_hash(public)
        state.mix_key(public)
        self.body = public + state.encrypt_and_hash(payload)
        self._state = state

    def __repr__(self) -> str:
        return "InitiatorHandshake(<redacted>)"

    def read_response(self, session: int, body: bytes) -> tuple[bytes, TrafficSecrets] | None:
        """The responder's payload and the traffic secrets, or ``None`` if ``body`` (``e ||
        sealed payload``) does not authenticate."""
        state = _Transcript.__new__(_Transcript)
        state.ck, state.h, state.key = self._state.ck, self._state.h, self._state.key
        responder_public = body[:32]
        state.mix_hash(session.to_bytes(4, "big"))
        state.mix_hash(responder_public)
        state.mix_key(responder_public)
        try:
            shared = self._ephemeral.exchange(X25519PublicKey.from_public_bytes(responder_public))
        except ValueError:  # a low-order point gives an all-zero secret: refuse it
            return None
        state.mix_key(shared)
        payload = state.decrypt_and_hash(body[32:])
        if payload is None:
            return None
        return payload, TrafficSecrets(*state.split())


class ResponderHandshake:
    """The responder's view of an authenticated message 1, ready to answer."""

    __slots__ = ("_initiator_public", "_state", "payload")

    def __init__(self, state: _Transcript, initiator_public: bytes, payload: bytes) -> None:
        self._state = state
        self._initiator_public = initiator_public
        self.payload = payload

    def __repr__(self) -> str:
        return "ResponderHandshake(<redacted>)"

    @classmethod
    def read_initiation(cls, psk: bytes, prologue: bytes, body: bytes) -> ResponderHandshake | None:
        """Authenticate message 1 (``e || sealed payload``): no DH is needed for this, so a
        stale initiation is refused before any X25519 work."""
        initiator_public = body[:32]
        state = _Transcript(prologue)
        state.mix_key_and_hash(psk)
        state.mix_hash(initiator_public)
        state.mix_key(initiator_public)
        payload = state.decrypt_and_hash(body[32:])
        if payload is None:
            return None
        return cls(state, initiator_public, payload)

    def write_response(
        self, session: int, payload: bytes, ephemeral: bytes
    ) -> tuple[bytes, TrafficSecrets] | None:
        """Message 2 body (``e || sealed payload``) bound to ``session``, and the traffic
        secrets; ``None`` when the initiator's ephemeral is a low-order point."""
        state = self._state
        private = X25519PrivateKey.from_private_bytes(ephemeral)
        public = private.public_key().public_bytes_raw()
        state.mix_hash(session.to_bytes(4, "big"))
        state.mix_hash(public)
        state.mix_key(public)
        try:
            shared = private.exchange(X25519PublicKey.from_public_bytes(self._initiator_public))
        except ValueError:
            return None
        state.mix_key(shared)
        body = public + state.encrypt_and_hash(payload)
        return body, TrafficSecrets(*state.split())
