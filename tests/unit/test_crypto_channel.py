"""Client and server channels under a fake clock: handshakes, data, rekey, roaming, abuse."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import TypeVar

import pytest

from ratbond.crypto import (
    ChannelMode,
    ClientChannel,
    DropCounters,
    HandshakeCompleted,
    HandshakeFailed,
    HandshakeInitiated,
    HandshakeRefused,
    KeysRotated,
    Limits,
    NotConnectedError,
    ServerChannel,
    SessionClosed,
    SessionEstablished,
    SessionExpired,
    UnknownSessionError,
)
from ratbond.wire import (
    HEADER_SIZE,
    PLAIN_INIT_SIZE,
    PLAIN_RESP_SIZE,
    SECURE_INIT_SIZE,
    SECURE_RESP_SIZE,
    TAG_SIZE,
    DropReason,
    MsgType,
    parse_header,
)
from tests.unit.test_crypto_support import (
    CIPHERS,
    CLIENT_ADDR,
    OTHER_PSK,
    SECURE_MODES,
    Pair,
    make_config,
    seeded,
)

E = TypeVar("E")
CHACHA = "chacha20-poly1305"
ALL = [(mode, cipher) for mode in ChannelMode for cipher in CIPHERS]
PAYLOAD = b"an IP packet inside a KCP segment " * 20


def _of(events: Sequence[object], kind: type[E]) -> list[E]:
    return [event for event in events if isinstance(event, kind)]


# -- handshake and data in every mode ----------------------------------------------------


@pytest.mark.parametrize(("mode", "cipher"), ALL)
def test_handshake_then_data_both_ways(mode: ChannelMode, cipher: str) -> None:
    pair = Pair(make_config(mode, cipher))
    pair.client.connect(0.0, pair.wall)
    assert pair.client.next_event() == HandshakeInitiated(attempt=1, rekey=False)
    initiation = pair.client.initiation_for_path(3)
    assert initiation is not None
    assert pair.server.receive_datagram(initiation, CLIENT_ADDR, 0.0, pair.wall) is None
    (reply, addr), = pair.server.datagrams_to_send()
    assert addr == CLIENT_ADDR
    secure = mode is not ChannelMode.PLAINTEXT
    assert len(initiation) == (SECURE_INIT_SIZE if secure else PLAIN_INIT_SIZE)
    assert len(reply) == (SECURE_RESP_SIZE if secure else PLAIN_RESP_SIZE)
    assert len(reply) <= len(initiation)  # no amplification
    assert parse_header(reply)[:3] == (1, MsgType.HANDSHAKE_RESPONSE, 3)  # type: ignore[index]

    assert pair.client.receive_datagram(reply, 0.0) is None
    session = pair.client.session
    assert session is not None and pair.client.established
    assert pair.client.next_event() == HandshakeCompleted(session)
    # Key confirmation: nothing is established on the server before the first DATA.
    assert pair.server.sessions == () and pair.server.next_event() is None
    with pytest.raises(UnknownSessionError):
        pair.server.seal(session, 3, b"x", 0.0)

    datagram = pair.client.seal(3, PAYLOAD, 0.1)
    overhead = HEADER_SIZE + (TAG_SIZE if secure else 0)
    assert len(datagram) == len(PAYLOAD) + overhead
    assert (PAYLOAD in datagram) is (mode is not ChannelMode.ENCRYPTED)
    assert pair.server.receive_datagram(datagram, CLIENT_ADDR, 0.1, pair.wall) == (
        session, 3, PAYLOAD)
    assert pair.server.next_event() == SessionEstablished(session, CLIENT_ADDR)
    back = pair.server.seal(session, 3, PAYLOAD[::-1], 0.2)
    assert (PAYLOAD[::-1] in back) is (mode is not ChannelMode.ENCRYPTED)
    assert pair.client.receive_datagram(back, 0.2) == (3, PAYLOAD[::-1])
    assert pair.client.stats.total == 0 and pair.server.stats.total == 0


@pytest.mark.parametrize(("mode", "cipher"), ALL)
def test_many_paths_each_count_from_zero(mode: ChannelMode, cipher: str) -> None:
    pair = Pair(make_config(mode, cipher))
    pair.paths = (1, 2, 700)
    pair.establish()
    for path in pair.paths:
        for _ in range(3):
            assert pair.c2s(path, b"p%d" % path) == (pair.client.session, path, b"p%d" % path)
            assert pair.s2c(path, b"q") == (path, b"q")
    header = parse_header(pair.client.seal(2, b"", pair.now))
    assert header.counter == 3  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", SECURE_MODES)
def test_tampered_data_is_refused(mode: ChannelMode) -> None:
    pair = Pair(make_config(mode))
    pair.establish()
    datagram = pair.client.seal(1, PAYLOAD, pair.now)
    for index in (0, 1, 3, 5, 10, HEADER_SIZE, len(datagram) - 1):
        forged = bytearray(datagram)
        forged[index] ^= 0x01
        assert pair.server.receive_datagram(bytes(forged), CLIENT_ADDR, 0, pair.wall) is None
    assert pair.server.stats.total == 7  # each counted once, whichever field it hit
    assert pair.server.stats.auth_failed == 4
    # The genuine one still passes: failed forgeries did not move the replay window.
    assert pair.server.receive_datagram(datagram, CLIENT_ADDR, 0, pair.wall) is not None


def test_plaintext_mode_still_suppresses_duplicates() -> None:
    pair = Pair(make_config(ChannelMode.PLAINTEXT))
    pair.establish()
    datagram = pair.client.seal(1, b"once", pair.now)
    assert pair.server.receive_datagram(datagram, CLIENT_ADDR, 0, pair.wall) is not None
    assert pair.server.receive_datagram(datagram, CLIENT_ADDR, 0, pair.wall) is None
    assert pair.server.stats.replayed == 1


# -- wrong secret, mismatched configuration ------------------------------------------------


@pytest.mark.parametrize("mode", SECURE_MODES)
def test_wrong_secret_gets_no_session_and_is_counted(mode: ChannelMode) -> None:
    pair = Pair(make_config(mode, psk=OTHER_PSK), make_config(mode))
    pair.connect()
    # Another secret has another key id: refused by one dict lookup, before any MAC.
    assert pair.server.stats.unknown_key == 1
    assert not pair.client.established and pair.server.sessions == ()
    # The client retries with back-off 1, 2, 4, 5, 5 s and says so after the third miss.
    deadlines = []
    for _ in range(5):
        timer = pair.client.get_timer()
        assert timer is not None
        deadlines.append(timer)
        pair.advance(timer - pair.now)
    assert [round(b - a, 6) for a, b in pairwise(deadlines)] == [2, 4, 5, 5]
    assert pair.server.stats.unknown_key == 6
    # The server's REJECT names the cause at once (t=0), then at most every 10 s (t=12 s),
    # and the "no response" line after the 3rd miss says the same refusal, not a guess.
    failures = [e.reason for e in _of(pair.client_events, HandshakeFailed)]
    assert failures == ["the server refused the handshake: it could not authenticate this "
                        "client: the --secret differs between client and server"] * 2
    assert len(_of(pair.client_events, HandshakeInitiated)) == 6


@pytest.mark.parametrize(
    ("client", "server"),
    [
        ((ChannelMode.PLAINTEXT, CHACHA), (ChannelMode.ENCRYPTED, CHACHA)),
        ((ChannelMode.ENCRYPTED, CHACHA), (ChannelMode.PLAINTEXT, CHACHA)),
        ((ChannelMode.AUTHENTICATED, CHACHA), (ChannelMode.ENCRYPTED, CHACHA)),
        ((ChannelMode.ENCRYPTED, "aes-256-gcm"), (ChannelMode.ENCRYPTED, CHACHA)),
    ],
)
def test_mode_mismatch_no_tunnel_and_both_sides_say_why(
    client: tuple[ChannelMode, str], server: tuple[ChannelMode, str]
) -> None:
    pair = Pair(make_config(*client), make_config(*server))
    pair.connect()
    assert not pair.client.established and pair.server.sessions == ()
    assert pair.server.stats.mode_mismatch == 1 and pair.client.stats.mode_mismatch == 1
    refused = _of(pair.server_events, HandshakeRefused)
    failed = _of(pair.client_events, HandshakeFailed)
    flag = "--cipher" if client[0] == server[0] else "--aes and --secret"
    assert len(refused) == 1 and f"use the same {flag} on both ends" in refused[0].reason
    assert len(failed) == 1 and failed[0].reason.startswith("the server refused the handshake")
    assert failed[0].reason.endswith(f"use the same {flag} on both ends")
    # Rate-limited: a burst of retries adds counts, not log lines.
    for _ in range(5):
        pair.client.connect(pair.now, pair.wall)
        pair.exchange_initiations()
    assert pair.server.stats.mode_mismatch == 6
    assert len(_of(pair.server_events, HandshakeRefused)) == 1
    assert len(_of(pair.client_events, HandshakeFailed)) == 1


def test_clock_outside_tolerance_is_refused() -> None:
    pair = Pair(make_config(ChannelMode.ENCRYPTED))
    pair.clock_offset = -400.0
    pair.connect()
    assert not pair.client.established
    assert pair.server.stats.handshake_stale == 1
    assert "clock" in _of(pair.server_events, HandshakeRefused)[0].reason


# -- replayed initiations ----------------------------------------------------------------


@pytest.mark.parametrize("mode", SECURE_MODES)
def test_replayed_initiation_is_refused_and_displaces_nothing(mode: ChannelMode) -> None:
    pair = Pair(make_config(mode))
    pair.client.connect(0.0, pair.wall)
    captured = pair.client.initiation_for_path(1)
    assert captured is not None
    pair.exchange_initiations()
    pair.c2s(1, b"confirm")
    live = pair.client.session
    assert pair.server.sessions == (live,)
    # Within the answer cache the copy gets the very same answer again and changes nothing.
    pair.server.receive_datagram(captured, ("203.0.113.9", 1), pair.now, pair.wall)
    (cached, _), = pair.server.datagrams_to_send()
    assert pair.client.receive_datagram(cached, pair.now) is None
    assert pair.client.session == live and pair.client.next_event() is None
    # Later it is refused outright: its timestamp is not newer than the one accepted.
    pair.advance(30)
    pair.server.receive_datagram(captured, ("203.0.113.9", 1), pair.now, pair.wall)
    assert pair.server.datagrams_to_send() == []
    assert pair.server.stats.handshake_stale == 1
    assert pair.server.sessions == (live,)
    assert not _of(pair.server_events, SessionClosed)
    assert pair.c2s(1, b"still flowing") == (live, 1, b"still flowing")


def test_replay_to_a_restarted_server_never_establishes() -> None:
    config = make_config(ChannelMode.ENCRYPTED)
    pair = Pair(config)
    pair.client.connect(0.0, pair.wall)
    captured = pair.client.initiation_for_path(1)
    assert captured is not None
    fresh = ServerChannel(config, random=seeded(99))  # remembers no timestamp
    fresh.receive_datagram(captured, ("203.0.113.9", 1), 10.0, pair.wall + 10)
    assert len(fresh.datagrams_to_send()) == 1  # answered: within tolerance, nothing known
    assert fresh.sessions == () and fresh.next_event() is None
    assert len(fresh._pending) == 1
    while (timer := fresh.get_timer()) is not None:
        fresh.handle_timer(timer)
    assert timer is None and fresh.sessions == () and fresh._keys == {} and not fresh._pending
    assert fresh.next_event() is None


def test_new_handshake_only_replaces_after_key_confirmation() -> None:
    config = make_config(ChannelMode.ENCRYPTED)
    first = Pair(config, client_id=b"client-1")
    old = first.establish()
    # The same client restarts (same id, fresh process state) and handshakes again.
    second = Pair(config, server=first.server, seed=7, client_id=b"client-1")
    second.now = first.now = 1.0
    second.connect()
    assert second.client.established
    assert first.server.sessions == (old,)  # not replaced yet
    assert first.c2s(1, b"old still works") == (old, 1, b"old still works")
    assert second.c2s(1, b"hello") is not None
    new = second.client.session
    assert new is not None and new != old and first.server.sessions == (new,)
    events = [*first.server_events, *second.server_events]
    assert SessionClosed(old, "replaced") in events
    assert SessionEstablished(new, CLIENT_ADDR) in events
    with pytest.raises(UnknownSessionError):
        first.server.seal(old, 1, b"x", first.now)


def test_duplicate_initiations_on_every_path_get_one_session() -> None:
    pair = Pair(make_config(ChannelMode.ENCRYPTED))
    pair.paths = (1, 2, 3)
    pair.client.connect(0.0, pair.wall)
    answers = pair.exchange_initiations()
    assert answers == 3  # each path gets an answer, from one handshake
    assert pair.client.stats.total == 0  # the extra copies are expected, not drops
    assert len(pair.server._keys) == 1
    for path in pair.paths:
        assert pair.c2s(path, b"x") is not None
    assert len(_of(pair.server_events, SessionEstablished)) == 1


# -- rekey -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(ChannelMode))
def test_rekey_while_traffic_flows_loses_nothing(mode: ChannelMode) -> None:
    pair = Pair(make_config(mode, "aes-256-gcm"))
    pair.paths = (1, 2)
    session = pair.establish()
    up_in_flight: list[bytes] = []
    down_in_flight: list[bytes] = []
    sent = received = 0
    step = 0.25
    while pair.now < 500:
        # Everything sealed one step ago arrives now, after any rekey that happened between.
        for datagram in up_in_flight:
            assert pair.server.receive_datagram(datagram, CLIENT_ADDR, pair.now, pair.wall)
            received += 1
        for datagram in down_in_flight:
            assert pair.client.receive_datagram(datagram, pair.now) is not None
            received += 1
        up_in_flight = [pair.client.seal(p, b"up %d" % sent, pair.now) for p in pair.paths]
        down_in_flight = [pair.server.seal(session, p, b"dn", pair.now) for p in pair.paths]
        sent += 4
        pair.advance(step)
    assert received == sent - 4
    rotated = _of(pair.client_events, KeysRotated)
    assert len(rotated) >= 3 and all(e.session == session for e in rotated)
    assert len(_of(pair.server_events, KeysRotated)) == len(rotated)
    assert not _of(pair.server_events, SessionClosed)
    assert not _of(pair.client_events, SessionExpired)
    assert pair.server.sessions == (session,) and pair.client.session == session
    assert pair.client.stats.total == 0 and pair.server.stats.total == 0
    # Old keys are gone once their grace period is over: at most current and previous remain.
    assert len(pair.server._keys) <= 2


def test_rekey_starts_after_the_message_limit() -> None:
    limits = Limits(rekey_after_messages=10, reject_after_messages=20)
    pair = Pair(make_config(ChannelMode.ENCRYPTED), limits=limits)
    pair.establish()  # one datagram sent on path 1
    for _ in range(9):
        pair.client.seal(1, b"x", pair.now)
    assert pair.client.get_timer() == pair.client.limits.rekey_after_time
    pair.client.seal(1, b"x", pair.now)  # counter 10 reaches the limit
    assert pair.client.get_timer() == pair.now
    pair.advance(0, deliver_initiations=False)
    assert _of(pair.client_events, HandshakeInitiated)[-1] == HandshakeInitiated(1, rekey=True)
    # Without an answer, sealing stops at the hard limit rather than reuse a nonce.
    for _ in range(9):
        pair.client.seal(1, b"x", pair.now)
    with pytest.raises(NotConnectedError):
        pair.client.seal(1, b"x", pair.now)
    pair.exchange_initiations()
    assert pair.client.seal(1, b"x", pair.now)  # new keys, counters from 0


def test_keys_expire_when_rekey_fails() -> None:
    pair = Pair(make_config(ChannelMode.ENCRYPTED))
    session = pair.establish()
    pair.now = 119.0
    pair.advance(1, deliver_initiations=False)  # 120 s: rekey starts; the server never hears it
    assert _of(pair.client_events, HandshakeInitiated)[-1].rekey
    while pair.now < 181:
        pair.advance(1, deliver_initiations=False)
    assert SessionExpired(session) in pair.client_events
    assert SessionClosed(session, "expired") in pair.server_events
    assert not pair.client.established and pair.server.sessions == ()
    with pytest.raises(NotConnectedError):
        pair.client.seal(1, b"x", pair.now)
    # The retries go on; once the server is reachable the tunnel comes back (a new session).
    pair.advance(5)
    assert pair.client.session not in (None, session)
    assert pair.c2s(1, b"back") is not None


def test_server_restart_gives_the_client_a_new_session() -> None:
    config = make_config(ChannelMode.ENCRYPTED)
    pair = Pair(config)
    old = pair.establish()
    pair.server = ServerChannel(config, random=seeded(5))
    pair.now = 120.0
    pair.advance(0)
    assert pair.client.session != old
    assert HandshakeCompleted(pair.client.session) in pair.client_events  # type: ignore[arg-type]


# -- roaming -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", SECURE_MODES)
def test_roaming_reported_only_for_authentic_fresh_datagrams(mode: ChannelMode) -> None:
    pair = Pair(make_config(mode))
    session = pair.establish()
    moved = ("198.51.100.7", 5555)
    assert pair.c2s(1, b"from the new lease", addr=moved) == (session, 1, b"from the new lease")
    # A replay from elsewhere, or a forgery with a valid session and path id, reports nothing.
    captured = pair.client.seal(1, b"captured", pair.now)
    assert pair.server.receive_datagram(captured, moved, pair.now, pair.wall) is not None
    assert pair.server.receive_datagram(captured, ("203.0.113.66", 1), 0, pair.wall) is None
    forged = captured[:HEADER_SIZE - 8] + (10**6).to_bytes(8, "big") + captured[HEADER_SIZE:]
    assert pair.server.receive_datagram(forged, ("203.0.113.66", 1), 0, pair.wall) is None
    assert pair.server.stats.replayed == 1 and pair.server.stats.auth_failed == 1


# -- floods --------------------------------------------------------------------------------


def test_initiation_flood_is_rate_limited_per_source() -> None:
    limits = Limits(handshake_rate=2.0, handshake_burst=5.0, rate_table_size=8)
    config = make_config(ChannelMode.ENCRYPTED)
    server = ServerChannel(config, random=seeded(3), limits=limits)
    flooder = ClientChannel(config, random=seeded(4), limits=limits)
    wall = 1_800_000_000.0
    for index in range(50):
        flooder.connect(0.0, wall + index * 1e-6)
        initiation = flooder.initiation_for_path(1)
        assert initiation is not None
        server.receive_datagram(initiation, ("203.0.113.1", index), 0.0, wall)
    assert server.stats.handshake_rate_limited == 45
    assert len(server.datagrams_to_send()) == 5
    # Another source is unaffected; the flooder gets 2 more after one second.
    pair = Pair(config, server=server)
    pair.connect()
    assert pair.client.established
    # Spoofed sources: the bucket table never grows past its bound (three-quarters full puts
    # the server under load: then junk is dropped by its shape, no bucket is taken).
    before = server.stats.total
    for index in range(1000):
        server.receive_datagram(b"\x01\x01" + bytes(102), (f"10.0.{index // 250}.{index % 250}",
                                                          1), 0.5, wall)
    assert len(server._buckets) <= 8
    assert server.under_load(0.5)
    assert server.stats.total - before == 1000
    assert server.stats.handshake_rate_limited + server.stats.malformed >= 1000


def test_pending_handshakes_are_bounded_in_plaintext_mode() -> None:
    limits = Limits(max_pending=16, max_clients=32, handshake_burst=10_000)
    config = make_config(ChannelMode.PLAINTEXT)
    server = ServerChannel(config, random=seeded(3), limits=limits)
    for index in range(200):
        client = ClientChannel(config, random=seeded(1000 + index), limits=limits)
        client.connect(0.0, 1_800_000_000.0)
        initiation = client.initiation_for_path(1)
        assert initiation is not None
        server.receive_datagram(initiation, ("192.0.2.1", 1), 0.0, 1_800_000_000.0)
    assert len(server._pending) == 16 and len(server._keys) == 16
    assert len(server._clients) <= 32


def test_close_session() -> None:
    pair = Pair(make_config(ChannelMode.ENCRYPTED))
    session = pair.establish()
    datagram = pair.client.seal(1, b"late", pair.now)
    pair.server.close_session(session)
    pair.server.close_session(session)  # idempotent
    assert pair.server.receive_datagram(datagram, CLIENT_ADDR, 0, pair.wall) is None
    assert pair.server.stats.unknown_session == 1
    with pytest.raises(UnknownSessionError):
        pair.server.seal(session, 1, b"x", pair.now)


def test_misuse_raises_typed_errors() -> None:
    client = ClientChannel(make_config(ChannelMode.ENCRYPTED))
    with pytest.raises(NotConnectedError):
        client.seal(1, b"x", 0.0)
    assert client.initiation_for_path(1) is None and client.get_timer() is None
    with pytest.raises(ValueError, match="8 bytes"):
        ClientChannel(make_config(ChannelMode.ENCRYPTED), client_id=b"short")
    pair = Pair(make_config(ChannelMode.ENCRYPTED))
    pair.establish()
    with pytest.raises(ValueError, match="path id"):
        pair.client.seal(70000, b"x", pair.now)


def test_every_drop_reason_has_a_counter() -> None:
    counters = DropCounters()
    for reason in DropReason:
        counters.count(reason)
    assert counters.as_dict() == {reason.value: 1 for reason in DropReason}
    assert counters.total == len(DropReason)
