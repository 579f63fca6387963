"""Per-path congestion control of the bond under a fake clock: the in-flight window,
pacing and the delivery-rate estimate keep a short WAN buffer from overflowing."""

from __future__ import annotations

import importlib.util
from typing import cast

import pytest

from ratbond import kcp as kcp_engines
from ratbond.bond import Bond, BondConfig
from ratbond.bond.path import (
    INITIAL_QUEUE_LIMIT,
    INITIAL_WINDOW,
    MIN_BURST,
    PACE_BURST,
    WINDOW_GAIN,
    Path,
    rto_floor_ms,
)
from ratbond.kcp import EngineName, KCPEngine
from tests.simnet import SimNet

from .test_bond_session import udp

ENGINES = ["c"] + (["python"] if importlib.util.find_spec("ratbond.kcp.core") else [])
LINK_RATE = 1000.0  # datagrams/s
ONE_WAY = 0.02


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> EngineName:
    return cast(EngineName, request.param)


def saturate(adaptive: bool, engine: EngineName, seconds: float = 4.0) -> SimNet:
    """One path (1000 datagrams/s, 40 ms RTT, 30 ms buffer) offered more than it carries."""
    config = BondConfig(kcp_engine=engine, adaptive_window=adaptive)
    net = SimNet(Bond(config, 0.0), Bond(config, 0.0))
    net.link(1, delay=ONE_WAY, rate=LINK_RATE, buffer=0.03)
    net.client.bond.add_path(1, 0.0)
    net.run_for(1.0)
    assert net.client.bond.live_paths() == [1]
    bond = net.client.bond
    end = net.now + seconds
    number = 0
    while net.now < end:  # a greedy sender: whatever the bond takes, every 2 ms
        while bond.send_packet(udp(0, number, size=1000), net.now):
            number += 1
        net.run_for(0.002)
    return net


def test_adaptive_window_fills_the_link_without_overflowing_its_buffer(
    engine: EngineName,
) -> None:
    net = saturate(True, engine)
    link = net.direction(1, from_client=True)
    path = net.client.bond.snapshot().paths[1]
    # The link stays busy (the ramp-up from the initial window included) ...
    assert len(net.server.packets) >= 0.8 * LINK_RATE * 4.0
    # ... while the WAN buffer rarely overflows and little is sent twice.
    assert link.tail_dropped <= 0.04 * link.datagrams
    assert path.retransmits <= 0.04 * path.tx_packets
    # The rate estimate found the link; the bound is the window plus 0.2 s of queue.
    assert 0.8 * LINK_RATE <= path.rate_pps <= 1.3 * LINK_RATE
    pipe = path.rate_pps * 2 * ONE_WAY
    assert path.queue_limit <= WINDOW_GAIN * pipe * 1.5 + 0.2 * path.rate_pps + 1


def test_without_the_adaptive_window_kcp_overflows_the_buffer(engine: EngineName) -> None:
    """The contrast that makes the previous test meaningful (KCP runs with nc=1): only
    the queue bound holds KCP back, and the WAN buffer overflows several times as often."""
    unpaced = saturate(False, engine)
    paced = saturate(True, engine)
    unpaced_link = unpaced.direction(1, from_client=True)
    paced_link = paced.direction(1, from_client=True)
    assert unpaced_link.tail_dropped > 0.1 * unpaced_link.datagrams
    assert unpaced_link.tail_dropped > 4 * paced_link.tail_dropped
    assert len(unpaced.server.packets) < len(paced.server.packets)


def test_a_new_path_starts_with_the_initial_window_and_bound(engine: EngineName) -> None:
    bond = Bond(BondConfig(kcp_engine=engine), 0.0)
    bond.add_path(1, 0.0)
    snapshot = bond.snapshot().paths[1]
    assert snapshot.queue_limit == INITIAL_QUEUE_LIMIT
    assert snapshot.rate_pps == 0.0
    path = bond._paths[1]  # the window is internal state
    assert path.window == INITIAL_WINDOW
    assert path.kcp.snd_wnd == INITIAL_WINDOW


@pytest.mark.parametrize(("nodelay", "floor"), [(False, 100), (True, 30)])
def test_kcp_rto_floor_follows_kcp_nodelay(engine: EngineName, nodelay: bool, floor: int) -> None:
    config = BondConfig(kcp_engine=engine, kcp_nodelay=nodelay)
    net = SimNet(Bond(config, 0.0), Bond(config, 0.0))
    net.link(1, delay=0.002)
    net.client.bond.add_path(1, 0.0)
    net.run_for(5.0)  # HELLOs give RTT samples of ~4 ms
    rto = net.client.bond.snapshot().paths[1].rto_ms
    assert floor <= rto < floor + 20


def test_pacing_releases_segments_at_the_pacing_rate(engine: EngineName) -> None:
    sent: list[bytes] = []
    path = Path(1, 1, BondConfig(kcp_engine=engine), sent.append, 0.0)
    for number in range(200):
        path.send(bytes(1200) + number.to_bytes(2, "big"))
    path.window = 200
    path.pace_rate = 1024.0  # segments/s; times in 1/1024 s keep the sums exact
    segments = []
    for now in (10 / 1024, 15 / 1024, 35 / 1024, 135 / 1024):
        path.flush(now)
        segments.append(len(sent))
        sent.clear()
    # The budget of 10, 5, 20 ticks, then of 100 ticks capped at PACE_BURST + MIN_BURST.
    assert segments == [10, 5, 20, int(1024 * PACE_BURST + MIN_BURST)]
    assert path.kcp.inflight == sum(segments)


def test_rto_floor_grows_with_the_minimum_rtt() -> None:
    assert rto_floor_ms(10, nodelay=False) == 100  # never below KCP's own floor
    assert rto_floor_ms(10, nodelay=True) == 45
    assert rto_floor_ms(120, nodelay=False) == 210


def test_path_raises_the_kcp_rto_floor_when_the_engine_allows(
    engine: EngineName, monkeypatch: pytest.MonkeyPatch
) -> None:
    floors: list[int] = []

    class WithMinRto:
        """An engine exposing set_min_rto (delegates everything else)."""

        def __init__(self, inner: KCPEngine) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> object:
            return getattr(self._inner, name)

        def set_min_rto(self, ms: int) -> None:
            floors.append(ms)

    create = kcp_engines.create
    monkeypatch.setattr(kcp_engines, "create", lambda *args: WithMinRto(create(*args)))
    config = BondConfig(kcp_engine=engine)
    net = SimNet(Bond(config, 0.0), Bond(config, 0.0))
    net.link(1, delay=0.06)
    net.client.bond.add_path(1, 0.0)
    net.run_for(3.0)
    assert floors
    assert floors[-1] == rto_floor_ms(net.client.bond.snapshot().paths[1].srtt_ms, False)
    assert floors[-1] >= 200  # 1.5 x 120 ms + 30 ms
