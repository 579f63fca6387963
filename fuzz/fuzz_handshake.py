"""Fuzz the handshake on both channels: a server and a client mid-handshake take any datagrams
under a fixed fake clock. The client's own initiation (deterministic: seeded randomness,
fixed clock) is the one genuine datagram; the seeds carry it so that the fuzzer starts from
a handshake the server completes.

The first input byte picks the channel settings (plaintext, or authenticated/encrypted with
either cipher); the rest is up to four datagrams. Invariants, for the secure modes: no
forged datagram authenticates, each is counted exactly once, the server never answers one
with a handshake response (a REJECT or cookie at most, never larger than what it answers),
the client never gets a session and the server's tables stay bounded. In plaintext mode
anyone may handshake (that is the mode), so only "no crash, no amplification, bounded
tables" holds.
"""

from __future__ import annotations

from fuzz._common import PSK, WALL_EPOCH, fuzz, instrumented, seeded, split

with instrumented(__name__):
    from ratbond import wire
    from ratbond.crypto import ChannelConfig, ChannelMode, ClientChannel, ServerChannel

NOW = 100.0
CONFIGS = (
    ChannelConfig(ChannelMode.PLAINTEXT, None),
    ChannelConfig(ChannelMode.ENCRYPTED, PSK, "chacha20-poly1305"),
    ChannelConfig(ChannelMode.ENCRYPTED, PSK, "aes-256-gcm"),
    ChannelConfig(ChannelMode.AUTHENTICATED, PSK, "chacha20-poly1305"),
    ChannelConfig(ChannelMode.AUTHENTICATED, PSK, "aes-256-gcm"),
)


def channels(config: ChannelConfig) -> tuple[ServerChannel, ClientChannel]:
    """A fresh server, and a client whose initiation is out (awaiting an answer)."""
    server = ServerChannel(config, random=seeded(2))
    client = ClientChannel(config, random=seeded(1), client_id=b"fuzzclnt")
    client.connect(NOW, WALL_EPOCH + NOW)
    return server, client


#: Clients kept across inputs (a new one costs a key pair): config index -> (client, uses).
_CLIENTS: dict[int, tuple[ClientChannel, int]] = {}
REUSE = 256


def _client(index: int) -> ClientChannel:
    """The waiting client of settings ``index``: the same initiation for :data:`REUSE`
    inputs, then a fresh one (also once a plaintext forgery gave it a session)."""
    client, uses = _CLIENTS.get(index, (None, REUSE))
    if client is None or uses >= REUSE or client.established:
        _, client = channels(CONFIGS[index])
        uses = 0
    _CLIENTS[index] = (client, uses + 1)
    return client


def _authenticated_part(initiation: bytes) -> bytes:
    """An initiation without its ``mac2``: a server not under load ignores that field (as
    WireGuard does), so a copy of the genuine one with another ``mac2`` is the genuine one."""
    return initiation[:-wire.MAC_SIZE]


def _tables(server: ServerChannel) -> int:
    return (len(server._keys) + len(server._pending) + len(server._sessions)
            + len(server._clients) + len(server._responses))


def test_one_input(data: bytes) -> None:
    if not data:
        return
    index = data[0] % len(CONFIGS)
    config = CONFIGS[index]
    secure = config.mode is not ChannelMode.PLAINTEXT
    server = ServerChannel(config, random=seeded(2))
    client = _client(index)
    for index, datagram in enumerate(split(data[1:], 4)):
        addr = (f"198.51.100.{index + 1}", 40000 + index)
        path_id = int.from_bytes(datagram[2:4], "big") if len(datagram) >= 4 else 0
        genuine = secure and _authenticated_part(datagram) == _authenticated_part(
            client.initiation_for_path(path_id) or b"")
        dropped = server.stats.total
        assert server.receive_datagram(datagram, addr, NOW, WALL_EPOCH + NOW) is None or (
            not secure)
        replies = server.datagrams_to_send()
        for reply, to in replies:
            assert to == addr
            assert len(reply) <= len(datagram), (len(reply), len(datagram))  # no amplification
            if secure and not genuine:  # only our client's own initiation is answered
                assert reply[1] != wire.MsgType.HANDSHAKE_RESPONSE, reply
        if secure and not genuine:
            assert server.stats.total == dropped + 1, server.stats
        assert _tables(server) <= 4 * (index + 1)
        dropped = client.stats.total
        opened = client.receive_datagram(datagram, NOW)
        if secure:
            assert opened is None
            assert not client.established
            assert client.stats.total == dropped + 1, client.stats
        while client.next_event() is not None:
            pass
        while server.next_event() is not None:
            pass
    server.handle_timer(NOW + 10)


if __name__ == "__main__":
    fuzz(test_one_input)
