"""Fuzz the DATA path of live sessions: whole client and server connections, established over
path 1, take forged datagrams from anywhere.

Input byte 0 picks the world (encrypted with either cipher, authenticated, plaintext; bits
0-1), the receiving end (bit 2) and whether the datagram gets the live session's genuine
DATA header (bit 3: the counter is taken from bytes 1-8 of the input), so that the fuzzer
reaches AEAD open and the replay window of a real session; bit 4 replays the newest genuine
datagram first. The rest is up to four datagrams. Invariants, for the secure modes: no
forged datagram authenticates, so nothing reaches either TUN; each is counted as exactly one
channel drop; the server never moves a path to the forger's address; and after many forged
inputs the genuine session still carries a packet both ways. Plaintext mode authenticates
nothing by design, so there only "no crash" holds (the bond and KCP behind it are fuzzed
with clear bytes).
"""

from __future__ import annotations

from fuzz._common import PSK, WALL_EPOCH, fuzz, instrumented, seeded, split

with instrumented(__name__):
    from ratbond import wire
    from ratbond.bond import BondConfig
    from ratbond.connection import ClientConnection, ConnectionConfig, ServerConnection
    from ratbond.crypto import ChannelConfig, ChannelMode

PATH = 1
CLIENT_ADDR = ("198.51.100.1", 40001)
FORGER = ("203.0.113.9", 666)
PROBE = bytes.fromhex("4500001c0001000040110000c0a80001c0a800020035003500080000")
_BOND = BondConfig(hello_interval=0.5, dead_after=2.0, kcp_engine="python")
CHANNELS = (
    ChannelConfig(ChannelMode.ENCRYPTED, PSK, "chacha20-poly1305"),
    ChannelConfig(ChannelMode.ENCRYPTED, PSK, "aes-256-gcm"),
    ChannelConfig(ChannelMode.AUTHENTICATED, PSK, "chacha20-poly1305"),
    ChannelConfig(ChannelMode.PLAINTEXT, None),
)


class World:
    """A client and a server connection with path 1 up, and a clock that only moves on."""

    RESET_EVERY = 256

    def __init__(self, channel: ChannelConfig, seed: int = 1) -> None:
        self.config = ConnectionConfig(channel, _BOND)
        self.secure = channel.mode is not ChannelMode.PLAINTEXT
        self.now = 0.0
        self.client = ClientConnection(self.config, now=0.0, wall_offset=WALL_EPOCH,
                                       client_id=b"fuzzclnt", random=seeded(seed))
        self.server = ServerConnection(self.config, now=0.0, wall_offset=WALL_EPOCH,
                                       random=seeded(seed + 1))
        self.last_up = self.last_down = b""  # the newest genuine DATA each way
        self.inputs = 0
        self.client.add_path(PATH, 0.0)
        self.client.connect(0.0)
        if not self.run_until(lambda: self.client.tunnel_up and self.server.active is not None):
            raise AssertionError("the pristine world never came up")
        self.check_alive()

    def pump(self) -> tuple[list[bytes], list[bytes]]:
        """Move every queued datagram once; the packets each end got (server, client)."""
        for _path, datagram in self.client.datagrams_to_send(self.now):
            if datagram[1] == wire.MsgType.DATA:
                self.last_up = datagram
            self.server.receive_datagram(datagram, CLIENT_ADDR, self.now)
        for datagram, addr in self.server.datagrams_to_send(self.now):
            if addr == CLIENT_ADDR:
                if datagram[1] == wire.MsgType.DATA:
                    self.last_down = datagram
                self.client.receive_datagram(datagram, self.now)
        return self.server.packets_received(), self.client.packets_received()

    def tick(self, seconds: float) -> tuple[list[bytes], list[bytes]]:
        self.now += seconds
        self.client.handle_timer(self.now)
        self.server.handle_timer(self.now)
        return self.pump()

    def run_until(self, done: object, steps: int = 200) -> bool:
        for _ in range(steps):
            self.tick(0.01)
            if done():  # type: ignore[operator]
                return True
        return False

    def check_alive(self) -> None:
        """A genuine packet still goes both ways (no forged input broke the session)."""
        got_up: list[bytes] = []
        got_down: list[bytes] = []
        assert self.client.send_packet(PROBE, self.now)
        for _ in range(100):
            up, down = self.tick(0.01)
            got_up += up
            got_down += down
            if PROBE in got_up:
                break
        assert PROBE in got_up, "a genuine packet no longer reaches the server"
        assert self.server.send_packet(PROBE, self.now)
        for _ in range(100):
            got_down += self.tick(0.01)[1]
            if PROBE in got_down:
                break
        assert PROBE in got_down, "a genuine packet no longer reaches the client"


_WORLDS: dict[int, World] = {}


def world(index: int) -> World:
    current = _WORLDS.get(index)
    if current is not None and current.inputs >= World.RESET_EVERY:
        if current.secure:  # plaintext: anyone may inject anything, a CLOSE included
            current.check_alive()
        current = None
    if current is None:
        current = _WORLDS[index] = World(CHANNELS[index])
    current.inputs += 1
    return current


def _addresses(server: ServerConnection) -> list[object]:
    return [dict(sess.addresses) for sess in server.sessions]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    flags = data[0]
    w = world(flags & 3)
    to_client = bool(flags & 4)
    body = data[1:]
    genuine = w.last_down if to_client else w.last_up
    if flags & 8:
        counter = int.from_bytes(body[:8].ljust(8, b"\0"), "big")
        body = genuine[:8] + counter.to_bytes(8, "big") + body[8:]
    datagrams = split(body, 4)
    if flags & 16:
        datagrams.insert(0, genuine)  # delivered already: a replay
    before = _addresses(w.server)
    for datagram in datagrams:
        if to_client:
            dropped = w.client.channel_stats.total
            w.client.receive_datagram(datagram, w.now)
            got = w.client.packets_received()
            stats = w.client.channel_stats
        else:
            dropped = w.server.channel_stats.total
            w.server.receive_datagram(datagram, FORGER, w.now)
            got = w.server.packets_received()
            stats = w.server.channel_stats
        if w.secure:
            assert got == [], got  # nothing forged reaches a TUN
            assert stats.total == dropped + 1, stats  # and the drop is counted, once
    if w.secure:
        assert _addresses(w.server) == before  # no path moved to the forger
    w.tick(0.01)
    while w.server.next_event() is not None:
        pass
    while w.client.next_event() is not None:
        pass


if __name__ == "__main__":
    fuzz(test_one_input)
