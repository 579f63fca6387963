"""Per-client credentials, found in O(1) by the clear key id an initiation carries.

Why per-client PSKs with a clear key id (and not, yet, static X25519 keys per client):

* **Cost O(1).**  The server reads the 8-byte key id after the prefix, looks it up in a dict,
  and checks ``mac1`` with that one client's MAC key.  An unknown id costs a dict miss and
  is dropped (``unknown_key``); no handshake ever tries every key, so 10 or 10,000 clients
  cost the same per initiation.
* **Blast radius.**  Each router holds only its own secret.  A stolen router lets the thief
  be that router (until its entry is removed from the clients file and the server reloads),
  never read or impersonate another client: every key of every other session is derived
  from another PSK.
* **The key id is a stable clear identifier**, like a user name: someone watching the WAN
  can tell that two initiations come from the same client (across addresses) and count
  clients.  It reveals nothing of the key (a one-way, domain-separated hash of the stretched
  PSK, :func:`ratbond.crypto.kdf.key_id`), and a single-client setup needs no new setting
  because both ends derive it from the PSK they already share.
* **Later: static keys.**  Noise ``IK`` with a static X25519 key per client would hide the
  identity (the server's static key encrypts it) and let a router keep a private key the
  server never sees; it costs one more X25519 per handshake and a key-distribution story.
  The key id slot in the wire format can carry a key hint then; nothing else here changes.

A :class:`CredentialTable` is built once at start (stretching secrets is slow; the caller does
it) and replaced whole on reload: :meth:`CredentialTable.replace` says which names were
removed or changed so the server can close their sessions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ratbond.crypto.errors import ConfigError
from ratbond.crypto.kdf import cookie_reply_key, key_id, mac_key
from ratbond.crypto.secret import PSK_SIZE
from ratbond.wire import TUNNEL_INFO_SIZE


@dataclass(frozen=True)
class ClientCredential:
    """One client as the server knows it."""

    name: str  # the client's name from the clients file ("" for the single-client setup)
    psk: bytes = field(repr=False)  # 32 bytes, already stretched (``ratbond.crypto.stretch``)
    #: The addressing this client must announce (``wire.pack_tunnel_info``); ``None``: the
    #: server config's ``tunnel_info``.
    tunnel_info: bytes | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.psk, bytes) or len(self.psk) != PSK_SIZE:
            raise ConfigError(
                f"client {self.name!r}: the key must be {PSK_SIZE} stretched bytes")
        if self.tunnel_info is not None and len(self.tunnel_info) != TUNNEL_INFO_SIZE:
            raise ConfigError(
                f"client {self.name!r}: tunnel_info must be {TUNNEL_INFO_SIZE} bytes")

    @property
    def key_id(self) -> bytes:
        return key_id(self.psk)


class CredentialEntry:
    """A credential with the keys the server derives from it once (not per handshake)."""

    __slots__ = ("cookie_key", "credential", "key_id", "mac_key")

    def __init__(self, credential: ClientCredential) -> None:
        self.credential = credential
        self.key_id = key_id(credential.psk)
        self.mac_key = mac_key(credential.psk)
        self.cookie_key = cookie_reply_key(credential.psk)

    @property
    def name(self) -> str:
        return self.credential.name

    def __repr__(self) -> str:
        return f"CredentialEntry({self.credential.name!r}, <redacted>)"


class CredentialTable:
    """Key id -> credential; the names are unique and so are the keys."""

    __slots__ = ("_by_id", "_by_name")

    def __init__(self, credentials: Iterable[ClientCredential] = ()) -> None:
        self._by_id: dict[bytes, CredentialEntry] = {}
        self._by_name: dict[str, CredentialEntry] = {}
        self._load(credentials)

    @classmethod
    def single(cls, psk: bytes, tunnel_info: bytes | None = None) -> CredentialTable:
        """Today's one-secret setup: one nameless client."""
        return cls([ClientCredential("", psk, tunnel_info)])

    def __len__(self) -> int:
        return len(self._by_id)

    def __repr__(self) -> str:
        return f"CredentialTable({sorted(self._by_name)!r})"

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._by_name)

    def lookup(self, key_id: bytes) -> CredentialEntry | None:
        """The entry an initiation's key id names, or ``None`` (one dict lookup)."""
        return self._by_id.get(key_id)

    def get(self, name: str) -> ClientCredential | None:
        entry = self._by_name.get(name)
        return entry.credential if entry is not None else None

    def replace(self, credentials: Iterable[ClientCredential]) -> frozenset[str]:
        """Swap in a new set (SIGHUP reload); returns the names removed or changed (their
        sessions must close: ``ServerChannel.drop_client``).  On a :class:`ConfigError`
        (duplicate name or key) the table is left as it was."""
        new = CredentialTable(credentials)
        gone = frozenset(
            name for name, entry in self._by_name.items()
            if new.get(name) != entry.credential
        )
        self._by_id, self._by_name = new._by_id, new._by_name
        return gone

    def _load(self, credentials: Iterable[ClientCredential]) -> None:
        for credential in credentials:
            if credential.name in self._by_name:
                raise ConfigError(f"client {credential.name!r} is listed twice")
            entry = CredentialEntry(credential)
            other = self._by_id.get(entry.key_id)
            if other is not None:
                raise ConfigError(
                    f"clients {other.name!r} and {credential.name!r} have the same secret: "
                    "give every client its own (openssl rand -base64 32)")
            self._by_id[entry.key_id] = entry
            self._by_name[credential.name] = entry
