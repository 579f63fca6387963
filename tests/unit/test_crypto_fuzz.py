"""Fuzzing every entry point that takes peer bytes: random and mutated datagrams never raise,
never yield a payload, never grow state."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratbond.crypto import ChannelMode, ServerChannel
from ratbond.wire import MAC_SIZE, MsgType
from tests.unit.test_crypto_support import CLIENT_ADDR, Pair, make_config

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
MODES = st.sampled_from(list(ChannelMode))
SECURE = st.sampled_from([ChannelMode.AUTHENTICATED, ChannelMode.ENCRYPTED])
CIPHERS = st.sampled_from(["chacha20-poly1305", "aes-256-gcm"])


def _state_size(server: ServerChannel) -> tuple[int, ...]:
    paths = sum(len(keys.paths) for keys in server._keys.values())
    return (len(server._keys), len(server._pending), len(server._sessions),
            len(server._clients), len(server._responses), paths)


def _established(mode: ChannelMode, cipher: str) -> tuple[Pair, dict[str, bytes]]:
    pair = Pair(make_config(mode, cipher))
    pair.client.connect(pair.now, pair.wall)
    init = pair.client.initiation_for_path(1)
    assert init is not None
    pair.server.receive_datagram(init, CLIENT_ADDR, pair.now, pair.wall)
    (response, _), = pair.server.datagrams_to_send()
    pair.client.receive_datagram(response, pair.now)
    up = pair.client.seal(1, b"payload up", pair.now)
    assert pair.server.receive_datagram(up, CLIENT_ADDR, pair.now, pair.wall) is not None
    session = pair.client.session
    assert session is not None
    down = pair.server.seal(session, 1, b"payload down", pair.now)
    samples = {"init": init, "response": response, "up": pair.client.seal(1, b"up2", 0),
               "down": down}
    return pair, samples


@st.composite
def mutations(draw: st.DrawFn, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "extend", "splice"]))
        if kind == "flip" and data:
            index = draw(st.integers(0, len(data) - 1))
            data[index] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[draw(st.integers(0, len(data))):]
        elif kind == "extend":
            data += draw(st.binary(min_size=1, max_size=32))
        else:
            start = draw(st.integers(0, len(data)))
            data[start:start] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@FUZZ
@given(MODES, CIPHERS, st.lists(st.binary(max_size=120), max_size=20))
def test_random_datagrams(mode: ChannelMode, cipher: str, junk: list[bytes]) -> None:
    pair, _ = _established(mode, cipher)
    before = _state_size(pair.server)
    for data in junk:
        result = pair.server.receive_datagram(data, ("203.0.113.5", 9), pair.now, pair.wall)
        if mode is not ChannelMode.PLAINTEXT:
            assert result is None
        assert pair.client.receive_datagram(data, pair.now) is None or (
            mode is ChannelMode.PLAINTEXT)
    for reply, _ in pair.server.datagrams_to_send():
        assert reply[1] != MsgType.HANDSHAKE_RESPONSE or mode is ChannelMode.PLAINTEXT
    if mode is not ChannelMode.PLAINTEXT:
        assert _state_size(pair.server) == before


@FUZZ
@given(SECURE, CIPHERS, st.sampled_from(["init", "response", "up", "down"]), st.data())
def test_mutated_datagrams(mode: ChannelMode, cipher: str, which: str, data: st.DataObject
                           ) -> None:
    pair, samples = _established(mode, cipher)
    original = samples[which]
    mutated = data.draw(mutations(original))
    if mutated == original:
        return
    before = _state_size(pair.server)
    assert pair.server.receive_datagram(mutated, ("203.0.113.5", 9), pair.now, pair.wall) is None
    # Only a prefix change gets an (unauthenticated) answer -- or a change in mac2 alone: a
    # server not under load ignores mac2, so that is the genuine initiation, answered again
    # from the response cache (nothing new is created).
    only_mac2 = which == "init" and mutated[:-MAC_SIZE] == original[:-MAC_SIZE]
    for reply, _ in pair.server.datagrams_to_send():
        allowed = (MsgType.REJECT, MsgType.HANDSHAKE_RESPONSE) if only_mac2 else (
            MsgType.REJECT,)
        assert reply[1] in allowed
    assert _state_size(pair.server) == before
    session = pair.client.session
    assert pair.client.receive_datagram(mutated, pair.now) is None
    assert pair.client.session == session
    # The genuine datagrams still work afterwards: nothing was poisoned.
    assert pair.server.receive_datagram(samples["up"], CLIENT_ADDR, 0, pair.wall) is not None
    assert pair.client.receive_datagram(samples["down"], pair.now) is not None


@FUZZ
@given(MODES, st.lists(st.binary(min_size=16, max_size=104), min_size=1, max_size=50))
def test_handshake_shaped_junk_keeps_memory_flat(mode: ChannelMode, bodies: list[bytes]) -> None:
    pair, _ = _established(mode, "chacha20-poly1305")
    before = _state_size(pair.server)
    for index, body in enumerate(bodies):
        data = b"\x01\x01" + body[2:]
        pair.server.receive_datagram(data, (f"198.51.100.{index}", 1), pair.now, pair.wall)
    pair.server.datagrams_to_send()
    if mode is not ChannelMode.PLAINTEXT:
        assert _state_size(pair.server) == before
    assert len(pair.server._buckets) <= pair.server.limits.rate_table_size
