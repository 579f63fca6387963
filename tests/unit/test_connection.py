"""Whole ends under a fake clock: a client and a server connection over simulated links.

Each test drives both ends exactly as the shells do (``tests/connsim.py``) and checks the
session policy: handshakes and their retries, transfers, rekeys, a server that goes away
and comes back or restarts, a client restart, roaming, paths dying and returning, and
configuration mismatches -- with the events each end reports and when.
"""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest

from ratbond.connection import (
    ClientConnection,
    HandshakeFailed,
    HandshakeRefused,
    HandshakeStarted,
    KeysRotated,
    PathDown,
    PathExistsError,
    PathMoved,
    PathUp,
    SessionEnded,
    SessionStarted,
    TunnelDown,
    TunnelUp,
    UnknownPathError,
)
from ratbond.connection.client import NO_PATH_REASON, REASON_SILENCE
from ratbond.crypto import ChannelMode, Limits
from ratbond.wire import pack_tunnel_info
from tests.connsim import WALL_EPOCH, ConnPair, Link, config, seeded

SHORT_KEYS = Limits(rekey_after_time=20.0, reject_after_time=30.0)


def udp(number: int, sport: int = 1000, size: int = 100) -> bytes:
    """An IPv4/UDP packet from port ``sport`` carrying ``number`` (flows are told apart by
    the port, so packets of one ``sport`` stay on one path under consistent hashing)."""
    payload = number.to_bytes(4, "big") + bytes(max(0, size - 32))
    header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0, 64, 17, 0,
                         bytes([10, 10, 10, 2]), bytes([192, 0, 2, 9]))
    return header + struct.pack(">HHHH", sport, 53, 8 + len(payload), 0) + payload


def number(packet: bytes) -> int:
    return int.from_bytes(packet[28:32], "big")


def connected(*delays: float, seed: int = 1, **options: object) -> ConnPair:
    """A pair with one path per delay, handshake done and every path up on both ends."""
    pair = ConnPair(config(**options), seed=seed)  # type: ignore[arg-type]
    for path_id, delay in enumerate(delays, start=1):
        pair.add_path(path_id, delay=delay)
    pair.start()
    assert pair.run_until(lambda: all_up(pair, len(delays)), 5.0)
    return pair


def all_up(pair: ConnPair, paths: int) -> bool:
    active = pair.server.active
    return (len(pair.client.live_paths()) == paths and active is not None
            and len(active.bond.live_paths()) == paths)


def session_of(pair: ConnPair) -> int | None:
    """The client's session now (a call, so a type checker does not carry an earlier
    ``is None`` over the simulation steps that change it)."""
    return pair.client.session


def send_stream(pair: ConnPair, first: int, count: int, *, rate: float = 200.0,
                to_server: bool = True) -> None:
    """Offer ``count`` numbered packets at ``rate`` per second from one end."""
    end = pair.client if to_server else pair.server
    for offset in range(count):
        assert end.send_packet(udp(first + offset), pair.now)
        pair.run_for(1.0 / rate)


# -- handshake and transfer -------------------------------------------------------------


def test_handshake_brings_up_session_tunnel_and_every_path() -> None:
    pair = connected(0.01, 0.03)
    client = pair.client_out
    assert [type(e) for e in client.of(HandshakeStarted)] == [HandshakeStarted]
    assert client.of(HandshakeStarted)[0] == HandshakeStarted(1, "connect")
    session = pair.client.session
    assert session is not None
    assert client.of(SessionStarted) == [SessionStarted(session)]
    assert client.of(TunnelUp) == [TunnelUp()]
    assert sorted(e.path_id for e in client.of(PathUp)) == [1, 2]
    # The session is up after one round trip of the fastest path (20 ms) ...
    assert client.times(SessionStarted) == [pytest.approx(0.02)]
    # ... and the server's TUN appears with the first authenticated data.
    server = pair.server_out
    assert server.of(TunnelUp) == [TunnelUp()]
    assert server.of(SessionStarted) == [SessionStarted(session, ("198.51.100.1", 40001))]
    moved = server.of(PathMoved)
    assert [(e.path_id, e.old) for e in moved] == [(1, None), (2, None)]


def test_packets_cross_in_both_directions_in_order() -> None:
    pair = connected(0.01, 0.02)
    send_stream(pair, 0, 300)
    send_stream(pair, 1000, 300, to_server=False)
    pair.run_for(1.0)
    assert [number(p) for p in pair.server_out.packets] == list(range(300))
    assert [number(p) for p in pair.client_out.packets] == list(range(1000, 1300))
    assert pair.client.counters.tx_unsealed == 0
    assert pair.server.counters.tx_unsealed == 0


@pytest.mark.parametrize("mode", list(ChannelMode))
def test_every_channel_mode_carries_data(mode: ChannelMode) -> None:
    pair = connected(0.01, mode=mode)
    send_stream(pair, 0, 50)
    pair.run_for(0.5)
    assert [number(p) for p in pair.server_out.packets] == list(range(50))


def test_send_before_any_session_is_counted_not_raised() -> None:
    pair = ConnPair(config())
    pair.add_path(1)
    assert pair.client.send_packet(udp(1), 0.0) is False
    assert pair.client.counters.tx_no_session == 1
    assert pair.server.send_packet(udp(1), 0.0) is False
    assert pair.server.counters.tx_no_session == 1
    assert not pair.client.can_send() and not pair.server.can_send()


def test_path_api_misuse_raises_typed_errors() -> None:
    pair = ConnPair(config())
    pair.add_path(1)
    with pytest.raises(PathExistsError):
        pair.client.add_path(1, 0.0)
    with pytest.raises(UnknownPathError):
        pair.client.remove_path(9, 0.0, "gone")


# -- handshake retries and failures -----------------------------------------------------


def test_unreachable_server_retries_back_off_to_five_seconds() -> None:
    pair = ConnPair(config())
    pair.add_path(1)
    pair.server_reachable = False
    pair.start()
    pair.run_for(23.0)
    assert pair.client_out.times(HandshakeStarted) == [0.0, 1.0, 3.0, 7.0, 12.0, 17.0, 22.0]
    reasons = [e.reason for e in pair.client_out.of(HandshakeStarted)]
    assert reasons == ["connect"] + ["retry"] * 6
    failed = pair.client_out.of(HandshakeFailed)
    assert failed and "no handshake response after 3 attempts" in failed[0].reason
    assert pair.client_out.times(HandshakeFailed)[0] == 7.0
    assert pair.client.session is None


def test_no_path_at_all_says_so_instead_of_blaming_the_server() -> None:
    pair = ConnPair(config())
    pair.start()
    pair.run_for(8.0)
    failed = pair.client_out.of(HandshakeFailed)
    assert failed == [HandshakeFailed(NO_PATH_REASON)]
    assert pair.client.counters.handshake_no_path == pair.client.counters.handshakes_started == 4
    # A WAN that appears later gets the pending initiation at once.
    pair.add_path(1)
    assert pair.run_until(lambda: pair.client.tunnel_up, pair.now + 0.1)


def test_wrong_secret_gets_no_session_on_either_end() -> None:
    pair = ConnPair(config(), config(psk=bytes(32)))
    pair.add_path(1)
    pair.start()
    pair.run_for(8.0)
    assert pair.client.session is None and pair.server.active is None
    assert pair.server.channel_stats.unknown_key >= 4  # another secret, another key id
    # Each end names the cause: the server logs it, the client learns it from a REJECT.
    refused = pair.server_out.of(HandshakeRefused)
    assert refused and "--secret differs from this server's" in refused[0].reason
    failed = pair.client_out.of(HandshakeFailed)
    assert failed == [HandshakeFailed("the server refused the handshake: it could not "
                                      "authenticate this client: the --secret differs between "
                                      "client and server")]


def test_mode_mismatch_is_named_on_both_ends() -> None:
    pair = ConnPair(config(ChannelMode.ENCRYPTED), config(ChannelMode.AUTHENTICATED))
    pair.add_path(1)
    pair.start()
    pair.run_for(3.0)
    assert pair.client.session is None
    refused = pair.server_out.of(HandshakeRefused)
    assert refused and "use the same --aes and --secret on both ends" in refused[0].reason
    failed = pair.client_out.of(HandshakeFailed)
    assert failed == [HandshakeFailed(
        "the server refused the handshake: it runs authenticated with chacha20-poly1305, this "
        "client encrypted with chacha20-poly1305: use the same --aes and --secret on both "
        "ends")]


def test_cipher_mismatch_names_the_cipher_flag() -> None:
    pair = ConnPair(config(cipher="aes-256-gcm"), config())
    pair.add_path(1)
    pair.start()
    pair.run_for(3.0)
    assert pair.client.session is None
    refused = pair.server_out.of(HandshakeRefused)
    assert refused and "use the same --cipher on both ends" in refused[0].reason
    failed = pair.client_out.of(HandshakeFailed)
    assert failed and failed[0].reason.endswith("use the same --cipher on both ends")


# -- keys ---------------------------------------------------------------------------------


def test_rekeys_under_load_lose_nothing() -> None:
    pair = connected(0.01, 0.02, limits=SHORT_KEYS)
    sent = 0
    while pair.now < 70.0:
        for _ in range(10):
            assert pair.client.send_packet(udp(sent), pair.now)
            sent += 1
        pair.run_for(0.1)
    pair.run_for(1.0)
    rotated = pair.client_out.times(KeysRotated)
    assert len(rotated) == 3  # at 20, 40 and 60 s
    assert [round(t) for t in rotated] == [20, 40, 60]
    assert [number(p) for p in pair.server_out.packets] == list(range(sent))
    assert len(pair.client_out.of(SessionStarted)) == 1
    assert pair.client.counters.tx_unsealed == 0


# -- the server goes away ---------------------------------------------------------------


def test_server_away_200_s_then_back_reconnects_within_one_retry_interval() -> None:
    """The latent fault of issue 9: keys expire (180 s) while the server is away; sealing
    must not raise, and the client must come back on its own when the server does."""
    pair = connected(0.01, 0.02)
    first = pair.client.session
    pair.server_reachable = False
    away_at = pair.now
    pair.run_for(200.0)
    assert pair.client.counters.tx_unsealed > 0  # HELLOs the expired keys could not seal
    started = pair.client_out.of(HandshakeStarted)
    assert started[1] == HandshakeStarted(1, REASON_SILENCE)
    silence = pair.client_config.silence_limit
    # Silence counts from the last datagram heard (those in flight at the cut still land).
    assert away_at + silence <= pair.client_out.times(HandshakeStarted)[1] <= (
        away_at + silence + 0.03)
    assert pair.client_out.of(PathDown)  # the paths died by silence
    assert pair.client_out.of(TunnelDown) == [TunnelDown()]
    # Nothing was dropped by an exception: both ends are still consistent.
    pair.server_reachable = True
    back_at = pair.now
    assert pair.run_until(lambda: pair.client.tunnel_up, back_at + 10.0)
    limits = pair.client_config.limits
    assert pair.now - back_at <= limits.handshake_retry_max + 0.1
    # The server forgot the session long ago (reaped after 3 x dead_after of silence).
    reaped = pair.server_out.of(SessionEnded)
    assert reaped and reaped[0].reason == "silent"
    assert pair.server_out.times(SessionEnded)[0] == pytest.approx(away_at + 6.0, abs=0.1)
    assert pair.client.session is not None and pair.client.session != first
    pair.client_out.packets.clear()
    assert pair.run_until(lambda: all_up(pair, 2), pair.now + 2.0)
    send_stream(pair, 0, 20, to_server=False)
    pair.run_for(0.5)
    assert [number(p) for p in pair.client_out.packets] == list(range(20))


def test_keys_expiring_while_the_server_is_away_never_raise() -> None:
    pair = connected(0.01)
    pair.server_reachable = False
    for _ in range(200):
        pair.client.send_packet(udp(1), pair.now)  # may be refused; must not raise
        pair.run_for(1.0)
    assert pair.now > 180.0
    assert pair.client.counters.tx_unsealed > 0
    assert pair.client.get_timer() is not None  # still scheduling retries


def test_server_restart_gives_a_new_session_by_itself() -> None:
    pair = connected(0.01, 0.02)
    first = pair.client.session
    pair.restart_server()
    restarted_at = pair.now
    assert pair.run_until(lambda: pair.client.session != first and pair.client.tunnel_up,
                          restarted_at + 10.0)
    silence = pair.client_config.silence_limit
    assert pair.now - restarted_at <= silence + 1.0
    ended = pair.client_out.of(SessionEnded)
    assert [e.session for e in ended] == [first]
    send_stream(pair, 0, 30)
    pair.run_for(0.5)
    assert [number(p) for p in pair.server_out.packets] == list(range(30))


def test_client_restart_replaces_its_old_session_at_once() -> None:
    pair = connected(0.01)
    old = pair.client.session
    fresh = ClientConnection(pair.client_config, now=pair.now, wall_offset=WALL_EPOCH,
                             client_id=b"client-1", random=seeded(77))
    pair.client = fresh
    pair.client_out.events.clear()
    fresh.add_path(1, pair.now)
    fresh.connect(pair.now)
    assert pair.run_until(lambda: fresh.tunnel_up, pair.now + 2.0)
    assert fresh.session != old
    ended = pair.server_out.of(SessionEnded)
    assert [e.session for e in ended] == [old]
    assert len(pair.server.sessions) == 1
    send_stream(pair, 0, 10)
    pair.run_for(0.3)
    assert [number(p) for p in pair.server_out.packets] == list(range(10))


def test_client_close_ends_the_session_on_the_server_at_once() -> None:
    pair = connected(0.01)
    pair.client.close(pair.now)
    closed_at = pair.now
    pair.run_for(0.1)
    ended = pair.server_out.of(SessionEnded)
    assert [e.reason for e in ended] == ["client closed it"]
    assert pair.server_out.times(SessionEnded) == [pytest.approx(closed_at + 0.01)]
    assert pair.client_out.of(TunnelDown) == [TunnelDown()]


def test_server_close_makes_the_client_start_over() -> None:
    pair = connected(0.01)
    first = pair.client.session
    pair.server.close(pair.now)
    pair.pump()
    pair.restart_server()
    assert pair.run_until(lambda: pair.client.tunnel_up and pair.client.session != first,
                          pair.now + 3.0)
    ended = pair.client_out.of(SessionEnded)
    assert [e.reason for e in ended] == ["server closed the session"]


# -- paths --------------------------------------------------------------------------------


def test_roaming_moves_the_path_and_data_follows() -> None:
    pair = connected(0.01, 0.02)
    pair.links[1].address = ("203.0.113.7", 51000)
    send_stream(pair, 0, 50)
    send_stream(pair, 100, 50, to_server=False)
    pair.run_for(0.5)
    moved = [e for e in pair.server_out.of(PathMoved) if e.old is not None]
    assert moved == [PathMoved(pair.client.session or 0, 1, ("198.51.100.1", 40001),
                               ("203.0.113.7", 51000))]
    assert [number(p) for p in pair.server_out.packets] == list(range(50))
    assert [number(p) for p in pair.client_out.packets] == list(range(100, 150))


def test_forged_source_does_not_move_a_path() -> None:
    pair = connected(0.01)
    captured = pair.client.datagrams_to_send(pair.now)
    pair.run_for(0.6)  # a HELLO went out meanwhile
    junk = random.Random(5)
    for _ in range(200):
        pair.server.receive_datagram(junk.randbytes(junk.randrange(0, 120)),
                                     ("192.0.2.66", 666), pair.now)
    for _, datagram in captured:
        pair.server.receive_datagram(datagram, ("192.0.2.66", 666), pair.now)
    pair.run_for(0.1)
    moved = [e for e in pair.server_out.of(PathMoved) if e.old is not None]
    assert moved == []
    active = pair.server.active
    assert active is not None and active.addresses[1] == ("198.51.100.1", 40001)


def test_junk_to_the_client_is_counted_never_raised() -> None:
    pair = connected(0.01)
    junk = random.Random(9)
    for _ in range(500):
        pair.client.receive_datagram(junk.randbytes(junk.randrange(0, 200)), pair.now)
    assert pair.client.channel_stats.total >= 500
    assert pair.client.tunnel_up


def test_blackholed_path_goes_down_on_both_ends_and_returns() -> None:
    pair = connected(0.01, 0.02)
    pair.links[2].blackhole = True
    cut_at = pair.now
    pair.run_for(3.0)
    session = pair.client.session or 0
    down = [(e.path_id) for e in pair.client_out.of(PathDown)]
    assert down == [2]
    assert pair.client.tunnel_up  # path 1 still carries the tunnel
    assert pair.client_out.times(PathDown)[0] - cut_at <= 2.1  # dead_after
    pair.links[2].blackhole = False
    pair.run_for(2.0)
    ups = [e for e in pair.client_out.of(PathUp) if e.path_id == 2]
    assert len(ups) == 2 and ups[-1] == PathUp(session, 2)
    assert pair.client.live_paths() == [1, 2]


def test_removed_path_leaves_the_server_within_one_trip() -> None:
    pair = connected(0.01, 0.02)
    pair.remove_path(2)
    removed_at = pair.now
    pair.run_for(0.2)
    down = pair.server_out.of(PathDown)
    assert [e.path_id for e in down] == [2]
    assert pair.server_out.times(PathDown)[0] - removed_at <= 0.011  # LINKDOWN over path 1


def test_last_path_gone_takes_the_tunnel_down_and_a_new_one_brings_it_back() -> None:
    pair = connected(0.01)
    pair.remove_path(1)
    pair.run_for(0.1)
    assert pair.client_out.of(TunnelDown) == [TunnelDown()]
    assert not pair.client.tunnel_up and not pair.client.can_send()
    pair.add_path(3, delay=0.02)
    assert pair.run_until(lambda: pair.client.tunnel_up, pair.now + 1.0)
    assert pair.client_out.of(TunnelUp) == [TunnelUp(), TunnelUp()]
    assert pair.client.live_paths() == [3]


def test_wall_clock_skew_is_refused_with_fix_ntp() -> None:
    pair = ConnPair(config())
    pair.client.set_wall_offset(WALL_EPOCH + 3600.0)  # the router's clock is an hour ahead
    pair.add_path(1)
    pair.start()
    pair.run_for(2.0)
    assert pair.client.session is None
    refused = pair.server_out.of(HandshakeRefused)
    assert refused and "fix NTP" in refused[0].reason
    failed = pair.client_out.of(HandshakeFailed)
    assert failed == [HandshakeFailed("the server refused the handshake: this machine's clock "
                                      "differs from the server's by more than 300 s: fix NTP "
                                      "on the router")]


def test_tunnel_addressing_mismatch_is_refused_on_both_ends() -> None:
    """Issue 10, item 8: no session whose every packet would be dropped."""
    v4 = ipaddress.IPv4Network("10.10.10.0/30")
    client = config(tunnel_info=pack_tunnel_info(ipaddress.IPv4Network("10.20.0.0/30"), None))
    server = config(tunnel_info=pack_tunnel_info(v4, None))
    pair = ConnPair(client, server)
    pair.add_path(1)
    pair.start()
    pair.run_for(3.0)
    assert pair.client.session is None and pair.server.active is None
    refused = pair.server_out.of(HandshakeRefused)
    assert refused and refused[0].reason == (
        "a client has --tunnel-ip=10.20.0.0/30 --tunnel-ip6=none, this server "
        "--tunnel-ip=10.10.10.0/30 --tunnel-ip6=none: use the same --tunnel-ip and "
        "--tunnel-ip6 on both ends")
    failed = pair.client_out.of(HandshakeFailed)
    assert failed == [HandshakeFailed(
        "the server refused the handshake: its tunnel addressing differs from this client's "
        "(--tunnel-ip=10.20.0.0/30 --tunnel-ip6=none): use the same --tunnel-ip and "
        "--tunnel-ip6 on both ends")]


def test_backup_path_carries_data_only_when_every_primary_is_down() -> None:
    pair = ConnPair(config())
    pair.add_path(1)
    pair.links[2] = Link(("198.51.100.2", 40002), 0.01)
    pair.client.add_path(2, pair.now, backup=True)
    pair.start()
    assert pair.run_until(lambda: all_up(pair, 2), 5.0)
    send_stream(pair, 0, 100)
    snap = pair.client.bond_snapshot(pair.now)
    assert snap is not None
    assert snap.paths[1].tx_packets == 100 and snap.paths[2].tx_packets == 0
    pair.remove_path(1)
    send_stream(pair, 100, 100)
    pair.run_for(0.5)
    snap = pair.client.bond_snapshot(pair.now)
    assert snap is not None and snap.paths[2].tx_packets == 100
    assert [number(p) for p in pair.server_out.packets] == list(range(200))


def test_an_idle_tunnel_sleeps_between_hellos() -> None:
    """Issue 9: an idle 3-path client used to wake ~100 times a second (KCP's 10 ms tick)."""
    pair = connected(0.01, 0.02, 0.03)
    pair.run_for(2.0)  # let the start-up settle
    wakeups = 0
    end = pair.now + 10.0
    while pair.now < end:
        timer = pair.client.get_timer()
        assert timer is not None  # HELLOs and liveness are always scheduled
        pair.run_until(lambda: False, max(timer, pair.now + 1e-6))
        wakeups += 1
    # HELLOs every 0.5 s on 3 paths (6 a second) and their echoes: about 8 wake-ups a
    # second, where KCP's 10 ms tick on every path used to make it 300.
    assert wakeups < 10 * 12


def test_server_stopping_then_restarting_later_is_rejoined() -> None:
    """A server that says CLOSE while stopping must not answer the client's new handshake
    with the session it is closing (the client would resume a dead session and hang)."""
    pair = connected(0.01, 0.02)
    first = pair.client.session
    pair.server.close(pair.now)
    pair.run_for(0.1)  # CLOSE arrives; the client's new initiation reaches the closing server
    assert pair.server.counters.rx_datagrams > 0 and pair.server.active is not None
    assert pair.client.session is None
    pair.server_reachable = False  # the process is gone for 2 s
    pair.run_for(2.0)
    pair.restart_server()
    pair.server_reachable = True
    back_at = pair.now
    assert pair.run_until(lambda: pair.client.tunnel_up, back_at + 10.0)
    assert pair.now - back_at <= pair.client_config.limits.handshake_retry_max
    assert session_of(pair) not in (None, first)
    assert pair.client_out.of(KeysRotated) == []
    send_stream(pair, 0, 20)
    pair.run_for(0.3)
    assert [number(p) for p in pair.server_out.packets] == list(range(20))
