"""Channel settings: the mode chosen by the flags, the stretched PSK, the cipher and limits.

Modes (the ``--aes`` flag keeps its Go-era name; what it does now):

* ``ENCRYPTED`` (``--aes --secret``): every datagram sealed with an AEAD (ChaCha20-Poly1305 by
  default, AES-256-GCM selectable): confidentiality, integrity, replay protection.
* ``AUTHENTICATED`` (``--secret`` alone): the payload travels in clear followed by a 16-byte
  tag computed by the same AEAD over ``header || payload`` with an empty plaintext (GMAC /
  Poly1305 in an AEAD construction).  Reusing the AEAD keeps one key schedule and one nonce
  discipline for both modes and is faster than HMAC-SHA256 on 1,400 bytes.
* ``PLAINTEXT`` (no secret): no authentication at all; a trivial handshake only assigns a
  session id and the counters still suppress duplicates.  The shell warns loudly at start.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ratbond.crypto.errors import ConfigError
from ratbond.crypto.secret import PSK_SIZE, Secret, stretch
from ratbond.wire import TUNNEL_INFO_SIZE, CipherCode, ModeCode

CIPHERS = {"chacha20-poly1305": CipherCode.CHACHA20_POLY1305, "aes-256-gcm": CipherCode.AES_256_GCM}
DEFAULT_CIPHER = "chacha20-poly1305"


class ChannelMode(enum.Enum):
    PLAINTEXT = ModeCode.PLAINTEXT
    AUTHENTICATED = ModeCode.AUTHENTICATED
    ENCRYPTED = ModeCode.ENCRYPTED


@dataclass(frozen=True)
class ChannelConfig:
    mode: ChannelMode
    psk: bytes | None = field(repr=False)  # 32 bytes, already stretched; None for PLAINTEXT
    cipher: str = DEFAULT_CIPHER
    #: What both ends must agree on besides the secret (``wire.pack_tunnel_info``): the
    #: server refuses an initiation carrying other bytes.  All zero: not checked.
    tunnel_info: bytes = bytes(TUNNEL_INFO_SIZE)

    def __post_init__(self) -> None:
        if len(self.tunnel_info) != TUNNEL_INFO_SIZE:
            raise ConfigError(f"tunnel_info must be {TUNNEL_INFO_SIZE} bytes")
        if self.cipher not in CIPHERS:
            raise ConfigError(f"unknown cipher {self.cipher!r}: choose {' or '.join(CIPHERS)}")
        if self.mode is ChannelMode.PLAINTEXT:
            if self.psk is not None:
                raise ConfigError("plaintext mode takes no key")
        elif not isinstance(self.psk, bytes) or len(self.psk) != PSK_SIZE:
            mode = self.mode.name.lower()
            raise ConfigError(f"{mode} mode needs a {PSK_SIZE}-byte stretched key")

    @classmethod
    def from_options(
        cls, *, aes: bool, secret: Secret | None, cipher: str = DEFAULT_CIPHER,
        tunnel_info: bytes = bytes(TUNNEL_INFO_SIZE),
    ) -> ChannelConfig:
        """The config the flags ask for; stretches the secret (slow, call once at start)."""
        if cipher not in CIPHERS:
            raise ConfigError(f"unknown cipher {cipher!r}: choose {' or '.join(CIPHERS)}")
        if secret is None:
            if aes:
                raise ConfigError(
                    "--aes needs --secret (or --secret-file, or RATBOND_SECRET): there is no "
                    "default secret any more"
                )
            return cls(ChannelMode.PLAINTEXT, None, cipher, tunnel_info)
        mode = ChannelMode.ENCRYPTED if aes else ChannelMode.AUTHENTICATED
        return cls(mode, stretch(secret), cipher, tunnel_info)

    @property
    def mode_code(self) -> ModeCode:
        return ModeCode(self.mode.value)

    @property
    def cipher_code(self) -> CipherCode:
        """The cipher as it travels in the handshake (NONE in plaintext mode)."""
        if self.mode is ChannelMode.PLAINTEXT:
            return CipherCode.NONE
        return CIPHERS[self.cipher]


@dataclass(frozen=True)
class Limits:
    """Timing and size limits (seconds, counts); the defaults follow WireGuard's reasoning.

    * Keys are replaced after ``rekey_after_time`` (120 s) and refused after
      ``reject_after_time`` (180 s): the 60 s between leave a client a dozen handshake retries
      before traffic stops, and bound what one compromised key exposes.
    * ``rekey_after_messages`` (2**60) and ``reject_after_messages`` (2**64 - 2**13) keep a
      64-bit counter (the nonce) from ever wrapping under one key, with room for the replay
      window; at 10**6 datagrams/s they are never reached, the time limits always are first.
    * Old keys stay valid for ``key_grace`` (10 s) after their successor is confirmed, far
      longer than a datagram spends in flight, so no datagram is lost across a rekey.
    * Handshake retries start at 1 s and back off to 5 s.  An answered but unconfirmed
      handshake is forgotten by the server after ``pending_timeout`` (60 s): the client seals
      with new keys at once and the bond sends HELLOs every 2 s, so confirmation comes within
      seconds unless every path is down.
    * Initiation timestamps must lie within ``clock_tolerance`` of the server's wall clock.
    * More than ``cookie_threshold`` initiations in one second put the server under load for
      at least a second: initiations then need a cookie (``ratbond.crypto.cookie``).  A
      legitimate burst (every client back after a server restart) only pays one more round
      trip; a spoofed flood pays with nothing the server keeps.
    """

    rekey_after_time: float = 120.0
    reject_after_time: float = 180.0
    rekey_after_messages: int = 2**60
    reject_after_messages: int = 2**64 - 2**13
    key_grace: float = 10.0
    handshake_retry: float = 1.0
    handshake_retry_max: float = 5.0
    pending_timeout: float = 60.0
    response_cache_time: float = 5.0
    clock_tolerance: float = 300.0
    failure_event_interval: float = 10.0
    handshake_rate: float = 20.0
    handshake_burst: float = 64.0
    rate_table_size: int = 4096
    cookie_threshold: int = 200
    max_clients: int = 4096
    max_pending: int = 1024
    max_paths: int = 4096

    def __post_init__(self) -> None:
        if not 0 < self.rekey_after_time < self.reject_after_time:
            raise ConfigError("need 0 < rekey_after_time < reject_after_time")
        if not 0 < self.rekey_after_messages < self.reject_after_messages <= 2**64:
            raise ConfigError("need 0 < rekey_after_messages < reject_after_messages <= 2**64")
        if self.cookie_threshold < 0:
            raise ConfigError(f"cookie_threshold {self.cookie_threshold}: need >= 0 "
                              "(0: always ask for a cookie)")


DEFAULT_LIMITS = Limits()
