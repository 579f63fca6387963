"""The cookie challenge under a fake clock: a flood never locks the legitimate client out."""

from __future__ import annotations

import random
from typing import cast

import pytest

from ratbond.crypto import (
    ChannelConfig,
    ChannelMode,
    ClientChannel,
    ConfigError,
    CookieReceived,
    Limits,
    ServerChannel,
)
from ratbond.crypto.cookie import COOKIE_SECRET_LIFETIME
from ratbond.wire import (
    COOKIE_REPLY_SIZE,
    MAC_SIZE,
    SECURE_INIT_SIZE,
    MsgType,
    parse_header,
)
from tests.connsim import ConnPair, config
from tests.unit.test_crypto_support import OTHER_PSK, PSK, WALL_EPOCH, seeded

Address = tuple[str, int]
ADDR = ("192.0.2.1", 40000)
CONFIG = ChannelConfig(ChannelMode.ENCRYPTED, PSK)
#: A low threshold so that a handful of initiations puts the server under load.
LOW = Limits(cookie_threshold=4)


def _types(out: list[tuple[bytes, Address]]) -> list[int]:
    return [parse_header(datagram).type for datagram, _ in out]  # type: ignore[union-attr]


def _load(server: ServerChannel, now: float, count: int = 10) -> None:
    """Junk initiations from spoofed sources until the server is under load."""
    for index in range(count):
        server.receive_datagram(bytes([1, 1]) + bytes(SECURE_INIT_SIZE - 2),
                                (f"203.0.113.{index}", 9), now, WALL_EPOCH + now)
    server.datagrams_to_send()
    assert server.under_load(now)


def _send(client: ClientChannel, server: ServerChannel, addr: Address, now: float,
          path: int = 1) -> list[tuple[bytes, Address]]:
    initiation = client.initiation_for_path(path)
    assert initiation is not None
    server.receive_datagram(initiation, addr, now, WALL_EPOCH + now)
    return server.datagrams_to_send()


def _events(client: ClientChannel) -> list[object]:
    events: list[object] = []
    while (event := client.next_event()) is not None:
        events.append(event)
    return events


def test_not_under_load_no_cookie_is_asked() -> None:
    server = ServerChannel(CONFIG, random=seeded(1), limits=LOW)
    client = ClientChannel(CONFIG, random=seeded(2), limits=LOW)
    client.connect(0.0, WALL_EPOCH)
    assert not server.under_load(0.0)
    assert _types(_send(client, server, ADDR, 0.0)) == [MsgType.HANDSHAKE_RESPONSE]


def test_under_load_a_cookie_first_then_the_handshake() -> None:
    server = ServerChannel(CONFIG, random=seeded(1), limits=LOW)
    client = ClientChannel(CONFIG, random=seeded(2), limits=LOW)
    _load(server, 0.0)
    client.connect(0.0, WALL_EPOCH)
    _events(client)
    first = client.initiation_for_path(1)
    assert first is not None and first[-MAC_SIZE:] == bytes(MAC_SIZE)  # no mac2 yet
    out = _send(client, server, ADDR, 0.0)
    assert _types(out) == [MsgType.COOKIE_REPLY]
    (reply, to), = out
    assert to == ADDR and len(reply) == COOKIE_REPLY_SIZE <= len(first)
    assert server.stats.handshake_needs_cookie == 1 and server.sessions == ()
    client.receive_datagram(reply, 0.0)
    assert _events(client) == [CookieReceived(1)]
    again = client.initiation_for_path(1)
    assert again is not None and again[:-MAC_SIZE] == first[:-MAC_SIZE]  # same handshake
    assert again[-MAC_SIZE:] != bytes(MAC_SIZE)
    out = _send(client, server, ADDR, 0.01)
    assert _types(out) == [MsgType.HANDSHAKE_RESPONSE]
    client.receive_datagram(out[0][0], 0.01)
    assert client.established
    # A later handshake (rekey, retry) from the same address carries the cookie at once.
    client.connect(1.0, WALL_EPOCH + 1.0)
    assert _types(_send(client, server, ADDR, 1.0)) == [MsgType.HANDSHAKE_RESPONSE]


def test_a_cookie_for_another_address_is_refused() -> None:
    server = ServerChannel(CONFIG, random=seeded(1), limits=LOW)
    client = ClientChannel(CONFIG, random=seeded(2), limits=LOW)
    _load(server, 0.0)
    client.connect(0.0, WALL_EPOCH)
    (reply, _), = _send(client, server, ADDR, 0.0)
    client.receive_datagram(reply, 0.0)
    # The initiation with mac2 for ADDR, from another port and from another host: refused,
    # and not even answered (the same initiation already got its cookie: a replay).
    for other in (("192.0.2.1", 40001), ("192.0.2.99", 40000)):
        assert _send(client, server, other, 0.1) == []
    assert server.stats.handshake_replayed == 2 and server.sessions == ()
    # A new initiation from the other address gets a cookie of its own.
    client.connect(0.2, WALL_EPOCH + 0.2)
    assert _types(_send(client, server, ("192.0.2.99", 40000), 0.2)) == [MsgType.COOKIE_REPLY]
    assert server.stats.handshake_needs_cookie == 2 and server.sessions == ()


def test_cookies_expire_with_the_server_secret() -> None:
    server = ServerChannel(CONFIG, random=seeded(1), limits=LOW)
    client = ClientChannel(CONFIG, random=seeded(2), limits=LOW)
    _load(server, 0.0)
    client.connect(0.0, WALL_EPOCH)
    (reply, _), = _send(client, server, ADDR, 0.0)
    client.receive_datagram(reply, 0.0)
    stamped = client.initiation_for_path(1)
    assert stamped is not None
    later = COOKIE_SECRET_LIFETIME + 1.0
    _load(server, later)
    server.receive_datagram(stamped, ADDR, later, WALL_EPOCH)  # the old cookie's mac2
    assert _types(server.datagrams_to_send()) == [MsgType.COOKIE_REPLY]
    # The client, too, stops using a cookie before the server would refuse it.
    client.connect(later, WALL_EPOCH + later)
    fresh = client.initiation_for_path(1)
    assert fresh is not None and fresh[-MAC_SIZE:] == bytes(MAC_SIZE)


def test_replayed_or_forged_cookie_replies_are_ignored() -> None:
    server = ServerChannel(CONFIG, random=seeded(1), limits=LOW)
    client = ClientChannel(CONFIG, random=seeded(2), limits=LOW)
    _load(server, 0.0)
    client.connect(0.0, WALL_EPOCH)
    _events(client)
    (reply, _), = _send(client, server, ADDR, 0.0)
    client.receive_datagram(reply, 0.0)
    client.receive_datagram(reply, 0.0)  # replayed: one cookie per initiation and path
    assert _events(client) == [CookieReceived(1)]
    assert client.stats.handshake_unexpected == 1
    # A reply to an earlier initiation does not open for the next one (AD = its mac1).
    client.connect(2.0, WALL_EPOCH + 2.0)
    _events(client)
    assert client.initiation_for_path(1) is not None
    client.receive_datagram(reply, 2.0)
    forged = reply[:20] + bytes(len(reply) - 20)
    client.receive_datagram(forged, 2.0)
    assert client.stats.handshake_auth_failed == 2 and _events(client) == []
    # Another client's reply (another PSK) does not open either.
    stranger = ServerChannel(ChannelConfig(ChannelMode.ENCRYPTED, OTHER_PSK), random=seeded(5),
                             limits=LOW)
    _load(stranger, 2.0)
    other = ClientChannel(ChannelConfig(ChannelMode.ENCRYPTED, OTHER_PSK), random=seeded(6))
    other.connect(2.0, WALL_EPOCH + 2.0)
    (their_reply, _), = _send(other, stranger, ADDR, 2.0)
    client.receive_datagram(their_reply, 2.0)
    assert client.stats.handshake_auth_failed == 3 and _events(client) == []
    # Malformed: wrong length, or a session/counter set.
    client.receive_datagram(reply[:-1], 2.0)
    assert client.stats.handshake_auth_failed == 4
    client.receive_datagram(reply[:4] + b"\x00\x00\x00\x01" + reply[8:], 2.0)
    assert client.stats.malformed == 1


def test_under_load_failed_handshakes_get_no_reject() -> None:
    server = ServerChannel(CONFIG, random=seeded(1), limits=LOW)
    _load(server, 0.0)
    wrong = ClientChannel(ChannelConfig(ChannelMode.ENCRYPTED, OTHER_PSK), random=seeded(3))
    wrong.connect(0.0, WALL_EPOCH)
    assert _send(wrong, server, ADDR, 0.0) == []  # unknown key: no REJECT to reflect
    assert server.stats.unknown_key == 1


def test_legitimate_client_connects_through_a_flood_from_10000_sources() -> None:
    """The #15 scenario: a captured initiation replayed, forged initiations and junk, from
    10,000 spoofed sources, with the legitimate client connecting in the middle."""
    limits = Limits(rate_table_size=4096)
    server = ServerChannel(CONFIG, random=seeded(1), limits=limits)
    victim = ClientChannel(CONFIG, random=seeded(2), client_id=b"victim01")
    victim.connect(0.0, WALL_EPOCH)
    captured = victim.initiation_for_path(1)
    assert captured is not None
    rng = random.Random(3)
    legit = ClientChannel(CONFIG, random=seeded(4), client_id=b"legit001")
    legit_addr = ("198.51.100.20", 5555)
    legit_out: list[bytes] = []
    spoofed_out = 0
    now = 0.0
    attempts = 0
    for index in range(10_000):
        now = index / 10_000  # 10,000 per second
        source = (f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}", 1024 + index)
        kind = index % 3
        if kind == 0:
            datagram = captured
        elif kind == 1:  # forged: right shape, random key id and MACs
            datagram = captured[:20] + rng.randbytes(len(captured) - 20)
        else:
            datagram = rng.randbytes(rng.randrange(1, 200))
        server.receive_datagram(datagram, source, now, WALL_EPOCH + now)
        if index == 5_000:  # the legitimate client starts in the middle of the flood
            legit.connect(now, WALL_EPOCH + now)
            attempts += 1
            initiation = legit.initiation_for_path(1)
            assert initiation is not None
            server.receive_datagram(initiation, legit_addr, now, WALL_EPOCH + now)
        for reply, to in server.datagrams_to_send():
            if to == legit_addr:
                legit_out.append(reply)
            else:
                spoofed_out += 1
                assert len(reply) <= SECURE_INIT_SIZE
        while legit_out:
            legit.receive_datagram(legit_out.pop(0), now)
            for event in _events(legit):
                if isinstance(event, CookieReceived):
                    attempts += 1
                    resend = legit.initiation_for_path(event.path_id)
                    assert resend is not None
                    server.receive_datagram(resend, legit_addr, now, WALL_EPOCH + now)
    assert legit.established and attempts == 2  # one initiation, one re-sent with mac2
    assert server.under_load(now)
    # The flood bought nothing the server keeps: no session, bounded tables; the proven
    # table only holds the legitimate source.
    assert len(server._buckets) <= limits.rate_table_size
    assert len(server._proven_buckets) == 1
    assert len(server._clients) <= 2 and len(server._pending) <= 2
    # The replays got one cookie reply per second between them (the same initiation), the
    # forged ones nothing: the flood bought no reflection once the server was under load.
    assert server.stats.handshake_replayed >= 3_000
    assert server.stats.handshake_needs_cookie <= 3  # the capture once, the legit client once
    # Answers before the load was detected (200 initiations), and the capture's one cookie.
    assert spoofed_out <= limits.cookie_threshold + 1


def test_spoofed_sources_filling_the_rate_table_do_not_lock_a_new_client_out() -> None:
    """The cause of the 1-in-6 lockout in #15: spoofed sources filled the per-source table,
    a new source was refused until the next prune, and the table refilled faster than the
    client retried.  A table three-quarters full now means "under load": the client proves
    its address with a cookie and gets a bucket in the proven table."""
    limits = Limits(rate_table_size=64, cookie_threshold=10_000)  # never by rate alone
    server = ServerChannel(CONFIG, random=seeded(1), limits=limits)
    for index in range(1_000):
        server.receive_datagram(bytes([1, 1]) + bytes(SECURE_INIT_SIZE - 2),
                                (f"10.9.{index >> 8}.{index & 255}", 1), index * 1e-4, WALL_EPOCH)
    assert len(server._buckets) == 48 and server.under_load(0.1)  # 3/4 full: no more taken
    client = ClientChannel(CONFIG, random=seeded(2))
    client.connect(0.1, WALL_EPOCH)
    (reply, _), = _send(client, server, ADDR, 0.1)
    client.receive_datagram(reply, 0.1)
    out = _send(client, server, ADDR, 0.1)
    assert _types(out) == [MsgType.HANDSHAKE_RESPONSE]
    client.receive_datagram(out[0][0], 0.1)
    assert client.established
    # Once the flood is over, the spoofed entries go and with them the load.
    later = ClientChannel(CONFIG, random=seeded(3))
    later.connect(5.0, WALL_EPOCH + 5.0)
    _send(later, server, ("192.0.2.50", 1), 5.0)
    assert not server.under_load(5.0) and len(server._buckets) <= 2
    later.connect(5.1, WALL_EPOCH + 5.1)
    assert _types(_send(later, server, ("192.0.2.50", 1), 5.1)) == [MsgType.HANDSHAKE_RESPONSE]


def test_connections_get_through_a_server_that_always_asks_for_cookies() -> None:
    """The connection layer re-sends on :class:`CookieReceived` (on every path)."""
    pair = ConnPair(config(limits=Limits(cookie_threshold=0)))
    pair.add_path(1)
    pair.add_path(2)
    pair.start()
    assert pair.run_until(lambda: pair.client.tunnel_up, pair.now + 1.0)
    assert pair.server.channel_stats.handshake_needs_cookie >= 2
    assert pair.client.counters.handshakes_started == 1  # no retry was needed
    with pytest.raises(ConfigError, match="cookie_threshold -1"):
        Limits(cookie_threshold=-1)


def test_ipv6_sources_as_the_kernel_gives_them() -> None:
    server = ServerChannel(CONFIG, random=seeded(1), limits=Limits(cookie_threshold=0))
    client = ClientChannel(CONFIG, random=seeded(2))
    client.connect(0.0, WALL_EPOCH)
    source = cast(Address, ("2001:db8::7", 40000, 0, 0))  # what an IPv6 socket gives
    (reply, to), = _send(client, server, source, 0.0)
    assert to == source
    client.receive_datagram(reply, 0.0)
    out = _send(client, server, source, 0.0)
    assert _types(out) == [MsgType.HANDSHAKE_RESPONSE]
