"""One server, several clients with their own credentials (a clients file), sans-I/O.

Each client has its own PSK and tunnel addressing; the server tells their sessions apart by
the credential, hands each client's packets to that client only, refuses source addresses a
client does not own (counted ``spoofed_source``), keeps one session per client, and drops
exactly the client a reload removes.
"""

from __future__ import annotations

import ipaddress
import struct

from ratbond.clients import AllowedIps
from ratbond.connection import ClientConnection, ServerConnection, SessionEnded, SessionStarted
from ratbond.connection.server import DEFAULT_CLIENT, REASON_REMOVED
from ratbond.crypto import ChannelMode
from ratbond.crypto.credentials import ClientCredential, CredentialTable
from ratbond.wire import pack_tunnel_info
from tests.connsim import WALL_EPOCH, FleetSim, config, seeded

NETS = {"alpha": "10.20.1.0/30", "beta": "10.20.2.0/30", "gamma": "10.20.3.0/30"}
LANS = {"alpha": "192.168.1.0/24", "beta": "192.168.2.0/24", "gamma": "192.168.3.0/24"}


def psk(name: str) -> bytes:
    return (name.encode() * 32)[:32]


def info(name: str) -> bytes:
    return pack_tunnel_info(ipaddress.IPv4Network(NETS[name]), None)


def udp(source: str, dest: str, number: int) -> bytes:
    payload = number.to_bytes(4, "big") + bytes(20)
    header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0, 64, 17, 0,
                         ipaddress.IPv4Address(source).packed,
                         ipaddress.IPv4Address(dest).packed)
    return header + struct.pack(">HHHH", 1000, 53, 8 + len(payload), 0) + payload


def allowed(name: str) -> AllowedIps:
    return AllowedIps([ipaddress.ip_network(NETS[name]), ipaddress.ip_network(LANS[name])])


def client_end(name: str, *, key: str | None = None, addressing: str | None = None,
               seed: int = 1) -> ClientConnection:
    cfg = config(ChannelMode.ENCRYPTED, psk=psk(key or name),
                 tunnel_info=info(addressing or name))
    return ClientConnection(cfg, now=0.0, wall_offset=WALL_EPOCH,
                            client_id=f"{name}-id".encode()[:8].ljust(8, b"."),
                            random=seeded(seed))


def fleet(*names: str, extra: dict[str, ClientConnection] | None = None) -> FleetSim:
    table = CredentialTable(ClientCredential(n, psk(n), info(n)) for n in names)
    server = ServerConnection(config(ChannelMode.ENCRYPTED), now=0.0, wall_offset=WALL_EPOCH,
                              random=seeded(99), credentials=table,
                              allowed={n: allowed(n) for n in names})
    clients = {n: client_end(n, seed=i) for i, n in enumerate(names, start=1)}
    clients.update(extra or {})
    sim = FleetSim(server, clients)
    for name in clients:
        sim.add_paths(name, 2)
    sim.start()
    return sim


def up(sim: FleetSim, *names: str) -> bool:
    def one(name: str) -> bool:
        active = sim.server.active_of(name)
        return (active is not None and len(active.bond.live_paths()) == 2
                and len(sim.clients[name].live_paths()) == 2)
    return all(one(n) for n in names)


def test_every_client_gets_its_own_session_named_by_its_credential() -> None:
    sim = fleet("alpha", "beta")
    assert sim.run_until(lambda: up(sim, "alpha", "beta"), 5.0)
    started = [e for e in sim.server_events if isinstance(e, SessionStarted)]
    assert sorted(e.client or "" for e in started) == ["alpha", "beta"]
    a, b = sim.server.active_of("alpha"), sim.server.active_of("beta")
    assert a is not None and b is not None and a.session != b.session
    assert (a.client, b.client) == ("alpha", "beta")
    assert sim.server.active is None  # no "default" client with a clients file


def test_packets_go_to_their_own_client_both_ways() -> None:
    sim = fleet("alpha", "beta")
    assert sim.run_until(lambda: up(sim, "alpha", "beta"), 5.0)
    for i in range(20):
        assert sim.server.send_packet(udp("8.8.8.8", "10.20.1.1", i), sim.now, "alpha")
        assert sim.server.send_packet(udp("8.8.4.4", "10.20.2.1", 100 + i), sim.now, "beta")
        sim.clients["alpha"].send_packet(udp("10.20.1.1", "1.1.1.1", 200 + i), sim.now)
        sim.clients["beta"].send_packet(udp("192.168.2.7", "1.1.1.1", 300 + i), sim.now)
    sim.run_for(1.0)
    assert sim.received["alpha"] == [udp("8.8.8.8", "10.20.1.1", i) for i in range(20)]
    assert sim.received["beta"] == [udp("8.8.4.4", "10.20.2.1", 100 + i) for i in range(20)]
    assert sim.server_received["alpha"] == [udp("10.20.1.1", "1.1.1.1", 200 + i)
                                            for i in range(20)]
    assert sim.server_received["beta"] == [udp("192.168.2.7", "1.1.1.1", 300 + i)
                                           for i in range(20)]
    counters = sim.server.client_counters
    assert (counters["alpha"].tx_packets, counters["alpha"].rx_packets) == (20, 20)
    assert counters["beta"].spoofed_source == 0


def test_a_source_address_the_client_does_not_own_never_reaches_its_tun() -> None:
    sim = fleet("alpha", "beta")
    assert sim.run_until(lambda: up(sim, "alpha", "beta"), 5.0)
    # alpha pretends to be beta (its tunnel address and its LAN), and someone outside both
    for i, source in enumerate(["10.20.2.1", "192.168.2.9", "203.0.113.5", "10.20.1.1"]):
        sim.clients["alpha"].send_packet(udp(source, "1.1.1.1", i), sim.now)
    sim.run_for(1.0)
    assert sim.server_received.get("alpha") == [udp("10.20.1.1", "1.1.1.1", 3)]
    assert "beta" not in sim.server_received
    assert sim.server.client_counters["alpha"].spoofed_source == 3
    assert sim.server.client_counters["beta"].spoofed_source == 0


def test_a_wrong_key_or_another_clients_key_gets_nothing() -> None:
    stranger = client_end("gamma", seed=7)  # a key the server does not know
    thief = client_end("thief", key="beta", addressing="gamma", seed=8)  # beta's key, own net
    sim = fleet("alpha", "beta", extra={"gamma": stranger, "thief": thief})
    assert sim.run_until(lambda: up(sim, "alpha", "beta"), 5.0)
    sim.run_for(3.0)
    assert stranger.session is None and thief.session is None
    assert {s.client for s in sim.server.sessions} == {"alpha", "beta"}
    stats = sim.server.channel_stats
    assert stats.unknown_key > 0  # gamma: O(1) miss on its key id
    assert stats.mode_mismatch > 0  # the thief: beta's key, but not beta's addressing
    assert up(sim, "alpha", "beta")


def test_a_new_session_of_one_client_replaces_only_its_own() -> None:
    sim = fleet("alpha", "beta")
    assert sim.run_until(lambda: up(sim, "alpha", "beta"), 5.0)
    beta_session = sim.server.active_of("beta").session  # type: ignore[union-attr]
    old_alpha = sim.server.active_of("alpha").session  # type: ignore[union-attr]
    # alpha's router restarts: a fresh connection with the same key and id
    sim.clients["alpha"] = client_end("alpha", seed=42)
    for path_id in (1, 2):
        sim.clients["alpha"].add_path(path_id, sim.now)
    sim.clients["alpha"].connect(sim.now)
    assert sim.run_until(lambda: up(sim, "alpha")
                         and sim.server.active_of("alpha").session != old_alpha,  # type: ignore[union-attr]
                         sim.now + 5.0)
    assert sim.server.active_of("beta").session == beta_session  # type: ignore[union-attr]
    ended = [e for e in sim.server_events if isinstance(e, SessionEnded)]
    assert [(e.session, e.client) for e in ended] == [(old_alpha, "alpha")]


def test_dropping_a_client_ends_its_session_and_keeps_the_others() -> None:
    sim = fleet("alpha", "beta")
    assert sim.run_until(lambda: up(sim, "alpha", "beta"), 5.0)
    alpha_session = sim.server.active_of("alpha").session  # type: ignore[union-attr]
    beta_session = sim.server.active_of("beta").session  # type: ignore[union-attr]
    table = sim.server._channel.credentials  # the runtime replaces the table on SIGHUP
    assert table is not None
    gone = table.replace([ClientCredential("alpha", psk("alpha"), info("alpha"))])
    assert gone == frozenset({"beta"})
    sim.server.drop_client("beta", sim.now)
    sim.pump()
    ended = [e for e in sim.server_events if isinstance(e, SessionEnded)]
    assert [(e.session, e.client, e.reason) for e in ended] == [
        (beta_session, "beta", REASON_REMOVED)]
    assert "beta" not in sim.server.client_counters
    assert not sim.server.send_packet(udp("8.8.8.8", "10.20.2.1", 1), sim.now, "beta")
    sim.run_for(5.0)
    # beta keeps knocking with a key the server no longer has: nothing comes back
    assert sim.server.active_of("beta") is None
    assert sim.server.active_of("alpha").session == alpha_session  # type: ignore[union-attr]
    assert up(sim, "alpha")


def test_without_credentials_every_session_is_the_default_clients() -> None:
    cfg = config(ChannelMode.ENCRYPTED)
    server = ServerConnection(cfg, now=0.0, wall_offset=WALL_EPOCH, random=seeded(5))
    client = ClientConnection(cfg, now=0.0, wall_offset=WALL_EPOCH, client_id=b"client-1",
                              random=seeded(6))
    sim = FleetSim(server, {"default": client})
    sim.add_paths("default", 1)
    sim.start()
    assert sim.run_until(lambda: server.active is not None and len(client.live_paths()) == 1
                         and len(server.active.bond.live_paths()) == 1, 5.0)
    assert server.active is server.active_of(DEFAULT_CLIENT)
    started = [e for e in sim.server_events if isinstance(e, SessionStarted)]
    assert [e.client for e in started] == [None]  # events name no client without a file
    client.send_packet(udp("203.0.113.9", "1.1.1.1", 1), sim.now)
    sim.run_for(0.5)
    # no allowed-ips without a clients file: today's behaviour
    assert sim.server_received[DEFAULT_CLIENT] == [udp("203.0.113.9", "1.1.1.1", 1)]


def test_a_timer_runs_only_the_sessions_that_are_due() -> None:
    sim = fleet("alpha", "beta", "gamma")
    assert sim.run_until(lambda: up(sim, "alpha", "beta", "gamma"), 5.0)
    sim.pump()
    runs: list[str] = []
    for sess in sim.server.sessions:
        original = sess.bond.handle_timer

        def counted(now: float, name: str = sess.client, run: object = original) -> None:
            runs.append(name)
            run(now)  # type: ignore[operator]
        sess.bond.handle_timer = counted  # type: ignore[method-assign]
    # traffic for alpha only: its bond wants to flush soon, the others sleep until a HELLO
    assert sim.server.send_packet(udp("8.8.8.8", "10.20.1.1", 1), sim.now, "alpha")
    due = {s.client: s.bond.get_timer() for s in sim.server.sessions}
    first = sim.server.get_timer()
    assert first is not None and first == due["alpha"]
    assert all(d is None or d > first for name, d in due.items() if name != "alpha")
    sim.server.handle_timer(first)
    assert runs == ["alpha"]
