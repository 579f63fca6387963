"""Our KCP against the reference ikcp (siokcp) over a lossy, duplicating, reordering channel.

Invariant everywhere: every message arrives exactly once, in order, byte-exact.  The
lock-step tests go further: fed identical calls, both engines emit identical bytes.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratbond.kcp import KCPEngine
from ratbond.kcp.core import KCP
from ratbond.kcp.fast import FastKCP
from tests.interop.twin import Twin
from tests.kcpsim import Channel, EngineFactory, Link, make_messages

DIRECTIONS: dict[str, tuple[EngineFactory, EngineFactory]] = {
    "python-to-c": (KCP, FastKCP),
    "c-to-python": (FastKCP, KCP),
}


def _fast_profile(engine: KCPEngine) -> None:
    engine.nodelay(1, 10, 2, 1)
    engine.wndsize(128, 128)


def _transfer(
    make_a: EngineFactory,
    make_b: EngineFactory,
    *,
    seed: int,
    loss: float,
    stream: bool,
    count: int,
    max_size: int,
    start_ms: int = 0,
    configure: Callable[[KCPEngine], object] = _fast_profile,
) -> tuple[Link, list[bytes]]:
    rng = random.Random(seed)
    forward = Channel(rng, loss=loss, duplicate=0.05, reorder=0.1, delay_ms=15, jitter_ms=10)
    backward = Channel(rng, loss=loss, duplicate=0.05, reorder=0.1, delay_ms=15, jitter_ms=10)
    link = Link(make_a, make_b, forward, backward, start_ms=start_ms)
    link.configure(configure)
    link.configure(lambda engine: engine.set_stream(stream))
    messages = make_messages(rng, count, 1, max_size)
    for message in messages:
        assert link.a.send(message) == len(message)
    if stream:
        expected = b"".join(messages)
        done = link.run_until(lambda: sum(map(len, link.received_b)) >= len(expected), 600_000)
        assert done, f"stalled at {sum(map(len, link.received_b))}/{len(expected)} bytes"
        assert b"".join(link.received_b) == expected
    else:
        done = link.run_until(lambda: len(link.received_b) >= len(messages), 600_000)
        assert done, f"stalled at {len(link.received_b)}/{len(messages)} messages"
        assert link.received_b == messages
    # Let stray duplicates land: nothing may be delivered twice.
    for _ in range(50):
        link.step()
    if stream:
        assert b"".join(link.received_b) == b"".join(messages)
    else:
        assert link.received_b == messages
    assert link.input_errors == 0
    return link, messages


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("stream", [False, True], ids=["message", "stream"])
@pytest.mark.parametrize("loss", [0.0, 0.1, 0.3])
def test_transfer_against_reference(direction: str, stream: bool, loss: float) -> None:
    make_a, make_b = DIRECTIONS[direction]
    # Up to 6 KB messages: several fragments each in message mode.
    link, _ = _transfer(
        make_a,
        make_b,
        seed=int(loss * 100) + stream,
        loss=loss,
        stream=stream,
        count=150,
        max_size=6000,
    )
    assert link.forward.lost > 0 or loss == 0.0
    assert link.forward.duplicated > 0


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_default_profile_with_congestion_control(direction: str) -> None:
    """Default ikcp settings (nc=0, interval 100, doubling RTO) interoperate too."""
    make_a, make_b = DIRECTIONS[direction]
    _transfer(
        make_a,
        make_b,
        seed=7,
        loss=0.05,
        stream=False,
        count=60,
        max_size=3000,
        configure=lambda _engine: None,
    )


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_clock_wraps_past_32_bits(direction: str) -> None:
    """ikcp's 32-bit clock wraps during the transfer; ours keeps counting."""
    make_a, make_b = DIRECTIONS[direction]
    _transfer(
        make_a,
        make_b,
        seed=3,
        loss=0.1,
        stream=False,
        count=80,
        max_size=3000,
        start_ms=2**32 - 300,
    )


def test_sequence_numbers_wrap_past_32_bits() -> None:
    """Our sender's sn crosses 2**32 while the reference receiver expects the wrap."""
    start = 2**32 - 40

    def ours(conv: int, output: object) -> KCPEngine:
        engine = KCP(conv, output)  # type: ignore[arg-type]
        engine._snd_una = engine._snd_nxt = start
        return engine

    def reference(conv: int, output: object) -> KCPEngine:
        engine = FastKCP(conv, output)  # type: ignore[arg-type]
        engine._kcp.rcv_nxt = start
        return engine

    _transfer(ours, reference, seed=5, loss=0.2, stream=False, count=100, max_size=2000)


NODELAY_PROFILES = [(0, 100, 0, 0), (0, 10, 0, 0), (1, 10, 2, 1), (2, 20, 3, 0), (1, 10, 1, 0)]


@pytest.mark.parametrize("profile", NODELAY_PROFILES, ids=str)
@pytest.mark.parametrize("stream", [False, True], ids=["message", "stream"])
def test_lockstep_identical_bytes(profile: tuple[int, int, int, int], stream: bool) -> None:
    """Same calls in, same datagrams, return values and stats out, at every single call."""
    rng = random.Random(11)
    forward = Channel(rng, loss=0.15, duplicate=0.05, reorder=0.1, delay_ms=20, jitter_ms=15)
    backward = Channel(rng, loss=0.15, duplicate=0.05, reorder=0.1, delay_ms=20, jitter_ms=15)
    link = Link(Twin, Twin, forward, backward)

    def setup(engine: KCPEngine) -> None:
        engine.nodelay(*profile)
        engine.wndsize(64, 128)
        engine.set_stream(stream)

    link.configure(setup)
    messages = make_messages(rng, 120, 1, 4000)
    for message in messages:
        link.a.send(message)
    expected = b"".join(messages)
    assert link.run_until(lambda: sum(map(len, link.received_b)) >= len(expected), 600_000)
    assert b"".join(link.received_b) == expected
    assert isinstance(link.a, Twin)
    assert link.a.calls > len(messages) + 200  # compared call by call, not just at the end


@settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    seed=st.integers(0, 2**32 - 1),
    loss=st.floats(0.0, 0.3),
    duplicate=st.floats(0.0, 0.2),
    reorder=st.floats(0.0, 0.3),
    sizes=st.lists(st.integers(1, 8000), min_size=1, max_size=40),
    ours_sends=st.booleans(),
    stream=st.booleans(),
)
def test_property_exactly_once_in_order(  # noqa: PLR0917 (hypothesis passes by keyword)
    seed: int,
    loss: float,
    duplicate: float,
    reorder: float,
    sizes: list[int],
    ours_sends: bool,
    stream: bool,
) -> None:
    rng = random.Random(seed)
    forward = Channel(rng, loss=loss, duplicate=duplicate, reorder=reorder, jitter_ms=20)
    backward = Channel(rng, loss=loss, duplicate=duplicate, reorder=reorder, jitter_ms=20)
    make_a, make_b = (KCP, FastKCP) if ours_sends else (FastKCP, KCP)
    link = Link(make_a, make_b, forward, backward)
    link.configure(_fast_profile)
    link.configure(lambda engine: engine.set_stream(stream))
    messages = [i.to_bytes(4, "big") + rng.randbytes(size) for i, size in enumerate(sizes)]
    for message in messages:
        assert link.a.send(message) == len(message)
    expected = b"".join(messages)
    assert link.run_until(lambda: sum(map(len, link.received_b)) >= len(expected), 600_000)
    for _ in range(30):
        link.step()
    if stream:
        assert b"".join(link.received_b) == expected
    else:
        assert link.received_b == messages


@settings(
    max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    seed=st.integers(0, 2**32 - 1),
    profile=st.tuples(st.integers(0, 2), st.integers(5, 120), st.integers(0, 4), st.integers(0, 1)),
    windows=st.tuples(st.integers(1, 256), st.integers(1, 256)),
    loss=st.floats(0.0, 0.3),
    stall_ms=st.integers(0, 20_000),
    stream=st.booleans(),
)
def test_property_lockstep_identical_bytes(  # noqa: PLR0917 (hypothesis passes by keyword)
    seed: int,
    profile: tuple[int, int, int, int],
    windows: tuple[int, int],
    loss: float,
    stall_ms: int,
    stream: bool,
) -> None:
    """Random settings, loss and a receiver that stops reading for a while (closing its
    window, so the sender must probe): the two engines still agree call by call."""
    rng = random.Random(seed)
    forward = Channel(rng, loss=loss, duplicate=0.05, reorder=0.1, jitter_ms=30)
    backward = Channel(rng, loss=loss, duplicate=0.05, reorder=0.1, jitter_ms=30)
    link = Link(Twin, Twin, forward, backward, start_ms=rng.choice([0, 2**32 - 2000]))

    def setup(engine: KCPEngine) -> None:
        engine.nodelay(*profile)
        engine.wndsize(*windows)
        engine.set_stream(stream)

    link.configure(setup)
    messages = make_messages(rng, 150, 1, 3000)  # ~250 segments: more than rcv_wnd
    for message in messages:
        link.a.send(message)
    link.reading_b = False
    link.run_until(lambda: False, stall_ms)
    link.reading_b = True
    expected = b"".join(messages)
    # An hour of simulated time: one-segment windows at 30 % loss each way without fast
    # resend climb to ikcp's 60 s RTO cap (seed 5313 needs more than 15 minutes in both engines);
    # a real stall still never completes.
    assert link.run_until(lambda: sum(map(len, link.received_b)) >= len(expected), 3_600_000)
    assert b"".join(link.received_b) == expected
