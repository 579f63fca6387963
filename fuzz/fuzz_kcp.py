"""Fuzz KCP input for either engine: a session with data in flight takes any datagram."""

from __future__ import annotations

from fuzz._common import fuzz, instrumented, split

with instrumented(__name__):
    import ratbond.kcp.core
    import ratbond.kcp.fast  # noqa: F401 - imported here so that both are instrumented
    from ratbond import kcp

#: The conversation id of path 1 under epoch 1, as the bond numbers them.
CONV = 1 << 16 | 1

_ERRORS = (0, -1, -2, -3)


def run(data: bytes, engine: str) -> None:
    """Three messages in flight, then every datagram of ``data`` is fed in: input answers
    0 or an error code, what comes out is bytes and never more than was sent to it."""
    sent: list[bytes] = []
    session = kcp.create(CONV, sent.append, engine)  # type: ignore[arg-type]
    session.nodelay(1, 10, 2, 1)
    session.wndsize(32, 32)
    session.update(1000)
    for size in (10, 1500, 3000):
        assert session.send(bytes(size)) == size
    session.flush()
    fed = 0
    now = 1000
    for datagram in split(data, 8):
        result = session.input(datagram)
        assert result in _ERRORS, result
        fed += len(datagram)
        now += 7
        session.update(now)
        while (message := session.recv()) is not None:
            assert isinstance(message, bytes)
            assert len(message) <= fed, (len(message), fed)
        assert session.peeksize() >= -1
    session.update(now + 5000)
    session.flush()
    assert 0 <= session.waitsnd() <= 3 * 3, session.waitsnd()
    assert all(isinstance(out, bytes) for out in sent)


def twin(data: bytes) -> None:
    """The two engines side by side, fed the same calls: while the pure engine accepts
    every datagram, the C engine must too and both must hand out the same messages and
    emit the same bytes (the lock-step property tests/interop checks on real traffic).  The
    comparison stops at the first datagram the pure engine refuses: it validates a whole
    datagram first, ikcp may apply its leading segments (a documented difference)."""
    outputs: dict[str, list[bytes]] = {"python": [], "c": []}
    engines = {name: kcp.create(CONV, out.append, name)  # type: ignore[arg-type]
               for name, out in outputs.items()}
    for session in engines.values():
        session.nodelay(1, 10, 2, 1)
        session.wndsize(32, 32)
        session.update(1000)
        for size in (10, 1500, 3000):
            session.send(bytes(range(256)) * (size // 256) + bytes(size % 256))
        session.flush()
    pure, ikcp = engines["python"], engines["c"]
    assert outputs["python"] == outputs["c"]
    now = 1000
    for datagram in split(data, 8):
        accepted = pure.input(datagram)
        result = ikcp.input(datagram)
        if accepted != 0:
            return
        assert result == 0, (accepted, result)
        now += 7
        pure.update(now)
        ikcp.update(now)
        while True:
            message = pure.recv()
            assert ikcp.recv() == message, message
            if message is None:
                break
        assert pure.peeksize() == ikcp.peeksize()
        assert pure.waitsnd() == ikcp.waitsnd(), (pure.waitsnd(), ikcp.waitsnd())
        assert outputs["python"] == outputs["c"], "the engines emitted different bytes"


def test_one_input(data: bytes) -> None:
    run(data, "python")


if __name__ == "__main__":
    fuzz(test_one_input)
