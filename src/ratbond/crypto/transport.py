"""Per-datagram protection under one handshake's keys: seal and open DATA datagrams.

A :class:`KeySet` holds what one handshake produced: the session id carried in the header,
the two traffic secrets and, lazily, one :class:`PathState` per path id -- a key per
direction derived with the path id, an AEAD object built once and reused, a send counter and
a replay window.  Every path counts from 0 under its own key, so (key, nonce) never repeats.

The nonce is the last 12 header bytes (``session || counter``); the header is the associated
data.  Seal and open are written for the hot path: one precompiled struct, no per-datagram
objects beyond the bytes, no logging (callers count the :class:`DropReason` returned).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ratbond.crypto.config import ChannelMode, Limits
from ratbond.crypto.errors import NotConnectedError
from ratbond.crypto.handshake import TrafficSecrets
from ratbond.crypto.kdf import path_key
from ratbond.crypto.replay import ReplayWindow
from ratbond.wire import HEADER, HEADER_SIZE, TAG_SIZE, VERSION, DropReason, MsgType

Aead = ChaCha20Poly1305 | AESGCM
AEADS: dict[str, Callable[[bytes], Aead]] = {
    "chacha20-poly1305": ChaCha20Poly1305,
    "aes-256-gcm": AESGCM,
}

_pack_header = HEADER.pack
_DATA = int(MsgType.DATA)
_I2R = b"i2r"
_R2I = b"r2i"


class PathState:
    """One path's keys, send counter and replay window under one key set."""

    __slots__ = ("recv_aead", "send_aead", "send_counter", "window")

    def __init__(self, send_aead: Aead | None, recv_aead: Aead | None, limit: int) -> None:
        self.send_aead = send_aead
        self.recv_aead = recv_aead
        self.send_counter = 0
        self.window = ReplayWindow(limit)


class KeySet:
    """The keys of one handshake, as seen by one side (``initiator`` or not)."""

    __slots__ = (
        "_aead",
        "_max_paths",
        "_mode",
        "_recv_label",
        "_recv_secret",
        "_reject_messages",
        "_rekey_messages",
        "_send_label",
        "_send_secret",
        "client_id",
        "confirmed",
        "created",
        "expires",
        "logical",
        "open",
        "paths",
        "retired_until",
        "seal",
        "session",
        "wants_rekey",
    )

    def __init__(
        self,
        *,
        session: int,
        logical: int,
        secrets: TrafficSecrets | None,
        initiator: bool,
        mode: ChannelMode,
        cipher: str,
        created: float,
        limits: Limits,
        client_id: tuple[str, bytes] = ("", b""),
    ) -> None:
        self.session = session  # key id in the header of every datagram under these keys
        self.logical = logical  # the session id the API reports; survives rekeys
        self.client_id = client_id
        self.created = created
        self.expires = created + limits.reject_after_time  # refused from then on
        self.retired_until = math.inf  # end of the grace period once a successor took over
        self.confirmed = False  # the peer has sent authenticated data under these keys
        self.wants_rekey = False  # a send counter passed rekey_after_messages
        self.paths: dict[int, PathState] = {}
        self._mode = mode
        self._aead = AEADS[cipher]
        self._max_paths = limits.max_paths
        self._reject_messages = limits.reject_after_messages
        self._rekey_messages = limits.rekey_after_messages
        if secrets is None:
            self._send_secret = self._recv_secret = b""
        elif initiator:
            self._send_secret = secrets.initiator_to_responder
            self._recv_secret = secrets.responder_to_initiator
        else:
            self._send_secret = secrets.responder_to_initiator
            self._recv_secret = secrets.initiator_to_responder
        self._send_label, self._recv_label = (_I2R, _R2I) if initiator else (_R2I, _I2R)
        if mode is ChannelMode.ENCRYPTED:
            self.seal, self.open = self._seal_encrypted, self._open_encrypted
        elif mode is ChannelMode.AUTHENTICATED:
            self.seal, self.open = self._seal_authenticated, self._open_authenticated
        else:
            self.seal, self.open = self._seal_plaintext, self._open_plaintext

    def __repr__(self) -> str:
        return f"KeySet(session={self.session:#010x}, logical={self.logical:#010x}, <redacted>)"

    def usable(self, now: float) -> bool:
        """Whether datagrams under these keys are still accepted at ``now``."""
        return now < self.expires and now < self.retired_until

    def retire(self, now: float, grace: float) -> None:
        """A successor took over: accept datagrams in flight for ``grace`` more seconds."""
        self.retired_until = min(self.retired_until, now + grace)

    # -- path state ----------------------------------------------------------------------

    def _make_path(self, path_id: int) -> PathState:
        if self._mode is ChannelMode.PLAINTEXT:
            return PathState(None, None, self._reject_messages)
        send = self._aead(path_key(self._send_secret, self._send_label, path_id))
        recv = self._aead(path_key(self._recv_secret, self._recv_label, path_id))
        return PathState(send, recv, self._reject_messages)

    def _send_path(self, path_id: int) -> PathState:
        path = self.paths.get(path_id)
        if path is None:
            if not 0 <= path_id <= 0xFFFF:
                raise ValueError(f"path id {path_id} is outside 0..65535")
            if len(self.paths) >= self._max_paths:
                raise NotConnectedError(f"more than {self._max_paths} paths under one key")
            path = self.paths[path_id] = self._make_path(path_id)
        return path

    def _next_counter(self, path: PathState) -> int:
        counter = path.send_counter
        if counter >= self._rekey_messages:
            self.wants_rekey = True
            if counter >= self._reject_messages:
                raise NotConnectedError("the key's message limit is reached; rekey pending")
        path.send_counter = counter + 1
        return counter

    def _open_new_path(self, data: bytes, path_id: int, counter: int) -> bytes | DropReason:
        """First datagram on a path: its state is kept only if the datagram authenticates."""
        if len(self.paths) >= self._max_paths:
            return DropReason.TOO_MANY_PATHS
        path = self._make_path(path_id)
        self.paths[path_id] = path
        result = self.open(data, path_id, counter)
        if type(result) is DropReason:
            del self.paths[path_id]
        return result

    # -- the three modes ----------------------------------------------------------------

    def _seal_encrypted(self, path_id: int, payload: bytes) -> bytes:
        path = self.paths.get(path_id) or self._send_path(path_id)
        header = _pack_header(VERSION, _DATA, path_id, self.session, self._next_counter(path))
        assert path.send_aead is not None
        return header + path.send_aead.encrypt(header[4:], payload, header)

    def _open_encrypted(self, data: bytes, path_id: int, counter: int) -> bytes | DropReason:
        path = self.paths.get(path_id)
        if path is None:
            return self._open_new_path(data, path_id, counter)
        window = path.window
        if not window.check(counter):
            return DropReason.REPLAYED
        if len(data) < HEADER_SIZE + TAG_SIZE:
            return DropReason.MALFORMED
        assert path.recv_aead is not None
        try:
            plaintext = path.recv_aead.decrypt(data[4:HEADER_SIZE], data[HEADER_SIZE:],
                                               data[:HEADER_SIZE])
        except InvalidTag:
            return DropReason.AUTH_FAILED
        window.commit(counter)
        return plaintext

    def _seal_authenticated(self, path_id: int, payload: bytes) -> bytes:
        path = self.paths.get(path_id) or self._send_path(path_id)
        message = _pack_header(VERSION, _DATA, path_id, self.session,
                               self._next_counter(path)) + payload
        assert path.send_aead is not None
        return message + path.send_aead.encrypt(message[4:HEADER_SIZE], b"", message)

    def _open_authenticated(self, data: bytes, path_id: int, counter: int) -> bytes | DropReason:
        path = self.paths.get(path_id)
        if path is None:
            return self._open_new_path(data, path_id, counter)
        window = path.window
        if not window.check(counter):
            return DropReason.REPLAYED
        if len(data) < HEADER_SIZE + TAG_SIZE:
            return DropReason.MALFORMED
        assert path.recv_aead is not None
        try:
            path.recv_aead.decrypt(data[4:HEADER_SIZE], data[-TAG_SIZE:], data[:-TAG_SIZE])
        except InvalidTag:
            return DropReason.AUTH_FAILED
        window.commit(counter)
        return data[HEADER_SIZE:-TAG_SIZE]

    def _seal_plaintext(self, path_id: int, payload: bytes) -> bytes:
        path = self.paths.get(path_id) or self._send_path(path_id)
        return _pack_header(VERSION, _DATA, path_id, self.session,
                            self._next_counter(path)) + payload

    def _open_plaintext(self, data: bytes, path_id: int, counter: int) -> bytes | DropReason:
        path = self.paths.get(path_id)
        if path is None:
            return self._open_new_path(data, path_id, counter)
        window = path.window
        if not window.check(counter):
            return DropReason.REPLAYED
        window.commit(counter)
        return data[HEADER_SIZE:]
