"""Per-client credentials: each client found by its key id in O(1), and kept to itself."""

from __future__ import annotations

import ipaddress

import pytest

from ratbond.crypto import (
    ChannelConfig,
    ChannelMode,
    ClientChannel,
    ClientCredential,
    ConfigError,
    CredentialTable,
    HandshakeCompleted,
    HandshakeRefused,
    ServerChannel,
    SessionClosed,
    SessionEstablished,
    UnknownSessionError,
)
from ratbond.crypto.handshake import ResponderHandshake
from ratbond.crypto.kdf import key_id, mac_key
from ratbond.crypto.messages import compute_mac, verify_mac1
from ratbond.wire import (
    HEADER_SIZE,
    KEY_ID_SIZE,
    MAC_SIZE,
    PREFIX_SIZE,
    MsgType,
    RejectReason,
    pack_tunnel_info,
    parse_header,
    parse_reject,
)
from tests.unit.test_crypto_support import OTHER_PSK, PSK, Pair, seeded

THIRD_PSK = bytes(range(2, 34))
ADDR_A = ("192.0.2.1", 40000)
ADDR_B = ("198.51.100.7", 50000)
MODE = ChannelMode.ENCRYPTED


def _config(psk: bytes, tunnel_info: bytes | None = None) -> ChannelConfig:
    if tunnel_info is None:
        return ChannelConfig(MODE, psk)
    return ChannelConfig(MODE, psk, tunnel_info=tunnel_info)


def _two_clients() -> tuple[ServerChannel, Pair, Pair]:
    table = CredentialTable([ClientCredential("a", PSK), ClientCredential("b", OTHER_PSK)])
    # The server's own psk is irrelevant once a table is given: use a third one.
    server = ServerChannel(_config(THIRD_PSK), credentials=table, random=seeded(7))
    pair_a = Pair(_config(PSK), server=server, seed=1)
    pair_b = Pair(_config(OTHER_PSK), server=server, seed=2)
    pair_b.addr = ADDR_B
    return server, pair_a, pair_b


def _initiation(client: ClientChannel, pair: Pair) -> bytes:
    client.connect(pair.now, pair.wall)
    datagram = client.initiation_for_path(1)
    assert datagram is not None
    return datagram


def test_each_client_gets_its_own_session_named_by_its_credential() -> None:
    server, pair_a, pair_b = _two_clients()
    session_a = pair_a.establish()
    session_b = pair_b.establish()
    assert session_a != session_b
    assert server.client_of(session_a) == "a" and server.client_of(session_b) == "b"
    established = [e for e in pair_a.server_events + pair_b.server_events
                   if isinstance(e, SessionEstablished)]
    assert established == [SessionEstablished(session_a, ADDR_A, "a"),
                           SessionEstablished(session_b, ADDR_B, "b")]
    # Data flows for both, each under its own keys.
    assert pair_a.c2s(1, b"from a") == (session_a, 1, b"from a")
    assert pair_b.c2s(1, b"from b") == (session_b, 1, b"from b")
    assert pair_a.s2c(1, b"to a") == (1, b"to a")
    assert pair_b.s2c(1, b"to b") == (1, b"to b")
    assert server.stats.total == 0
    with pytest.raises(UnknownSessionError):
        server.client_of(12345)


def test_key_id_is_derived_from_the_psk_and_sent_in_clear() -> None:
    pair = Pair(_config(PSK))
    datagram = _initiation(pair.client, pair)
    assert pair.client.key_id == key_id(PSK) == ClientCredential("", PSK).key_id
    assert datagram[HEADER_SIZE + PREFIX_SIZE:HEADER_SIZE + PREFIX_SIZE + KEY_ID_SIZE] == key_id(
        PSK)
    assert len(set(map(key_id, (PSK, OTHER_PSK, THIRD_PSK)))) == 3
    assert key_id(PSK) not in mac_key(PSK)  # domain-separated from the MAC key


def test_one_clients_key_under_anothers_key_id_is_refused() -> None:
    server, pair_a, _ = _two_clients()
    genuine = _initiation(pair_a.client, pair_a)
    start = HEADER_SIZE + PREFIX_SIZE
    claimed = genuine[:start] + key_id(OTHER_PSK) + genuine[start + KEY_ID_SIZE:]
    # As sent (mac1 under a's key), and with mac1 recomputed by a for the changed bytes:
    # b's MAC key is not a's, so both fail the one MAC check.
    remac = claimed[:-2 * MAC_SIZE]
    remac += compute_mac(mac_key(PSK), remac) + bytes(MAC_SIZE)
    for forged in (claimed, remac):
        assert server.receive_datagram(forged, ADDR_A, 0.0, pair_a.wall) is None
    assert server.stats.handshake_auth_failed == 2 and server.stats.unknown_key == 0
    replies = server.datagrams_to_send()
    assert [parse_reject(reply).reason for reply, _ in replies] == [  # type: ignore[union-attr]
        RejectReason.AUTH_FAILED] * 2
    assert server.sessions == ()


def test_unknown_key_id_costs_no_mac_aead_or_x25519_and_is_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    real_read = ResponderHandshake.read_initiation.__func__  # type: ignore[attr-defined]

    def spy_read(cls: type, *args: object) -> object:
        calls.append("aead")
        return real_read(cls, *args)

    def spy_mac1(key: bytes, data: bytes) -> bool:
        calls.append("mac1")
        return verify_mac1(key, data)

    monkeypatch.setattr(ResponderHandshake, "read_initiation", classmethod(spy_read))
    monkeypatch.setattr("ratbond.crypto.server.verify_mac1", spy_mac1)
    server, _, _ = _two_clients()
    stranger = Pair(_config(THIRD_PSK), server=server, seed=3)
    stranger.connect()
    assert calls == [] and server.stats.unknown_key == 1
    assert not stranger.client.established and server.sessions == ()
    refused = [e for e in stranger.server_events if isinstance(e, HandshakeRefused)]
    assert refused and "--secret differs" in refused[0].reason
    # The genuine client costs exactly one MAC and one AEAD open.
    calls.clear()
    Pair(_config(PSK), server=server, seed=4).connect()
    assert calls == ["mac1", "aead"]


def test_reload_removes_a_client_and_closes_its_session() -> None:
    server, pair_a, pair_b = _two_clients()
    session_a = pair_a.establish()
    session_b = pair_b.establish()
    gone = server.reload([ClientCredential("a", PSK)])
    assert gone == frozenset({"b"})
    assert server.sessions == (session_a,)
    pair_b.drain_events()
    assert SessionClosed(session_b, "removed", "b") in pair_b.server_events
    # b is a stranger now; a is untouched.
    pair_b.client.forget_session()
    pair_b.now = pair_a.now = 1.0
    pair_b.connect()
    assert server.stats.unknown_key == 1
    assert pair_a.c2s(1, b"still here") == (session_a, 1, b"still here")
    # A changed secret counts as removed too; an unchanged table drops nobody.
    assert server.reload([ClientCredential("a", PSK)]) == frozenset()
    assert server.reload([ClientCredential("a", THIRD_PSK)]) == frozenset({"a"})
    assert len(server.sessions) == 0


def test_reload_with_a_bad_table_changes_nothing() -> None:
    server, pair_a, _ = _two_clients()
    session = pair_a.establish()
    with pytest.raises(ConfigError, match="'a' is listed twice"):
        server.reload([ClientCredential("a", PSK), ClientCredential("a", THIRD_PSK)])
    with pytest.raises(ConfigError, match="'x' and 'y' have the same secret"):
        server.reload([ClientCredential("x", THIRD_PSK), ClientCredential("y", THIRD_PSK)])
    assert server.sessions == (session,) and server.credentials is not None
    assert server.credentials.names == frozenset({"a", "b"})


def test_bad_credentials_are_refused_with_the_name() -> None:
    with pytest.raises(ConfigError, match="client 'r1': the key must be 32 stretched bytes"):
        ClientCredential("r1", b"short")
    with pytest.raises(ConfigError, match="client 'r1': tunnel_info must be 22 bytes"):
        ClientCredential("r1", PSK, b"x")
    with pytest.raises(ConfigError, match="needs an authenticated mode"):
        ServerChannel(ChannelConfig(ChannelMode.PLAINTEXT, None),
                      credentials=CredentialTable.single(PSK))
    assert "r1" in repr(CredentialTable([ClientCredential("r1", PSK)]))
    assert PSK.hex() not in repr(ClientCredential("r1", PSK))


def test_a_client_copying_anothers_client_id_cannot_touch_its_session() -> None:
    table = CredentialTable([ClientCredential("a", PSK), ClientCredential("b", OTHER_PSK)])
    server = ServerChannel(_config(PSK), credentials=table, random=seeded(7))
    same_id = b"router01"
    pair_a = Pair(_config(PSK), server=server, seed=1, client_id=same_id)
    pair_b = Pair(_config(OTHER_PSK), server=server, seed=2, client_id=same_id)
    pair_b.addr = ADDR_B
    session_a = pair_a.establish()
    session_b = pair_b.establish()
    assert set(server.sessions) == {session_a, session_b}
    assert not [e for e in pair_b.server_events if isinstance(e, SessionClosed)]


def test_per_client_tunnel_addressing() -> None:
    net_a = pack_tunnel_info(ipaddress.IPv4Network("10.1.0.0/30"), None)
    net_b = pack_tunnel_info(ipaddress.IPv4Network("10.2.0.0/30"), None)
    table = CredentialTable([ClientCredential("a", PSK, net_a),
                             ClientCredential("b", OTHER_PSK, net_b)])
    server = ServerChannel(_config(PSK), credentials=table, random=seeded(7))
    good = Pair(_config(PSK, net_a), server=server, seed=1)
    good.establish()
    wrong = Pair(_config(OTHER_PSK, net_a), server=server, seed=2)  # b announcing a's net
    wrong.addr = ADDR_B
    datagram = _initiation(wrong.client, wrong)
    server.receive_datagram(datagram, ADDR_B, 0.0, wrong.wall)
    (reply, _), = server.datagrams_to_send()
    assert parse_reject(reply).reason == RejectReason.TUNNEL_MISMATCH  # type: ignore[union-attr]


def test_ten_thousand_clients_are_found_by_one_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = [ClientCredential(f"r{index}", index.to_bytes(32, "big"))
                   for index in range(10_000)]
    credentials.append(ClientCredential("me", PSK))
    table = CredentialTable(credentials)
    assert len(table) == 10_001
    assert isinstance(table._by_id, dict)  # the O(1) claim is about this
    macs: list[bytes] = []

    def spy_mac1(key: bytes, data: bytes) -> bool:
        macs.append(key)
        return verify_mac1(key, data)

    monkeypatch.setattr("ratbond.crypto.server.verify_mac1", spy_mac1)
    server = ServerChannel(_config(THIRD_PSK), credentials=table, random=seeded(7))
    pair = Pair(_config(PSK), server=server)
    pair.establish()
    assert macs == [mac_key(PSK)]  # one MAC, with the right client's key: no trial of keys
    assert server.client_of(pair.client.session or 0) == "me"


def test_single_client_setup_needs_no_table() -> None:
    pair = Pair(_config(PSK))
    session = pair.establish()
    assert pair.server.client_of(session) == ""
    assert isinstance(pair.client_events[-1], HandshakeCompleted)
    assert parse_header(pair.client.seal(1, b"x", 0.0)).type == MsgType.DATA  # type: ignore[union-attr]
