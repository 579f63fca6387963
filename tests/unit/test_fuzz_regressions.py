"""What the coverage-guided fuzzers (``fuzz/``, ``bench/fuzz.py``) found, as exact inputs,
and a check that every harness still runs its seed corpus (so the harnesses cannot rot).

No atheris here: each harness's ``test_one_input`` is called directly, the way libFuzzer
calls it.
"""

from __future__ import annotations

import os
import random
import weakref
from pathlib import Path

import pytest
from fuzz.replay import load

from fuzz import fuzz_bond, fuzz_config, make_corpus
from ratbond import clients, config
from ratbond.bond import Bond, BondConfig

CORPUS = Path(__file__).resolve().parents[2] / "fuzz" / "corpus"
HARNESSES = ("wire", "handshake", "transport", "bond", "kcp", "kcp_c", "flow", "config")
MUTATED_INPUTS = 200


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """One of libFuzzer's simpler moves: flip, insert, erase or overwrite a few bytes."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        move = rng.randrange(4)
        where = rng.randint(0, len(out))
        if move == 0 and out:
            out[min(where, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif move == 1:
            out[where:where] = rng.randbytes(rng.randint(1, 8))
        elif move == 2:
            del out[where:where + rng.randint(1, 8)]
        else:
            out[where:where + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00",
                                               b"\xff\x00", b"\x7f\xff\xff\xff"])
    return bytes(out)


@pytest.mark.parametrize("harness", HARNESSES)
def test_harness_runs_its_seeds_and_mutations(harness: str) -> None:
    seeds = sorted((CORPUS / harness).iterdir())
    assert 1 <= len(seeds) <= 200
    test_one_input = load(harness)
    for path in seeds:
        test_one_input(path.read_bytes())
    rng = random.Random(harness)
    for _ in range(MUTATED_INPUTS):
        test_one_input(_mutate(rng, rng.choice(seeds).read_bytes()))


def test_seed_corpus_stays_small() -> None:
    files = [p for p in CORPUS.rglob("*") if p.is_file()]
    assert {p.parent.name for p in files} == set(HARNESSES)
    assert len(files) <= 200
    assert sum(p.stat().st_size for p in files) <= 500 * 1024


def test_in_process_seeds_are_reproducible() -> None:
    """``make_corpus --no-capture`` gives the same bytes every time (seeded randomness and a
    fixed clock), so regenerating the corpus does not churn it."""
    assert make_corpus.in_process() == make_corpus.in_process()


# --------------------------------------------------------------------------- found by fuzz_bond

#: A KCP datagram for path 1 under a newer epoch (0x1001) holding one PUSH segment with no
#: data: KCP hands out an empty message, and ``Bond.receive`` read its type byte
#: (``message[0]``) -> IndexError out of the protocol core.  Any authenticated peer could
#: send it, and in plaintext mode anyone.
EMPTY_KCP_MESSAGE = bytes.fromhex(
    "0100011051000004cce90a000000000000000000000000000000000000000000")


def test_empty_kcp_message_is_counted_not_raised() -> None:
    _client, server, now = fuzz_bond.established()
    server.receive(1, EMPTY_KCP_MESSAGE, now)
    assert server.snapshot(now=now).drops.get("empty_message") == 1
    assert server.packets_received() == []
    assert server.has_path(1)


def test_empty_kcp_message_through_the_harness() -> None:
    fuzz_bond.test_one_input(b"\x00" + EMPTY_KCP_MESSAGE)


def test_empty_message_on_a_fresh_bond() -> None:
    bond = Bond(BondConfig(kcp_engine="python"), 0.0)
    bond.add_path(1, 0.0)
    bond.receive(1, EMPTY_KCP_MESSAGE, 0.1)
    assert bond.snapshot(now=0.1).drops.get("empty_message") == 1


# --------------------------------------------------------------------------- found by fuzz_config

#: A config file whose first byte is not UTF-8: tomllib raises UnicodeDecodeError (not
#: TOMLDecodeError), which both loaders let through as a traceback at start.
NOT_UTF8 = b"\x9f"


def test_config_file_not_utf8_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ratbond.toml"
    path.write_bytes(b'connect-addr = "192.0.2.1:1"\n# caf\xe9\n')
    with pytest.raises(config.ConfigError, match=r"is not UTF-8 text \(byte 34 is 0xe9\)"):
        config.load_toml(str(path))


def test_clients_file_not_utf8_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "clients.toml"
    path.write_bytes(NOT_UTF8)
    with pytest.raises(clients.ClientsFileError, match=r"--clients: .* is not UTF-8 text"):
        clients.load_clients(str(path))


@pytest.mark.parametrize("role", [0, 1, 2])
def test_not_utf8_through_the_harness(role: int) -> None:
    fuzz_config.test_one_input(bytes([role]) + NOT_UTF8)


# --------------------------------------------------------------------------- found by fuzz_kcp_c


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def test_c_engine_sessions_are_freed() -> None:
    """Each C-engine session used to leak with its ikcp buffers: siokcp's object is not
    seen by the cycle collector and held a bound method of the adapter (found as the
    fuzzer's RSS climbing 30 KB per input).  The bond makes a new session per path epoch,
    so a flapping link leaked a session's buffers per flap."""
    pytest.importorskip("siokcp")
    from ratbond.kcp.fast import FastKCP

    sent: list[bytes] = []
    probe = FastKCP(1, sent.append)
    probe.update(0)
    probe.send(b"x")
    probe.flush()
    assert sent  # output still reaches the caller through the weak link
    ref = weakref.ref(probe)
    del probe
    assert ref() is None  # freed by reference counting alone, no cycle left
    before = _rss_mib()
    for _ in range(5000):
        session = FastKCP(1 << 16 | 1, sent.append)
        session.update(1000)
        session.send(bytes(16 * 1024))  # 12 segments held in its send buffer
        session.flush()
        sent.clear()
    assert _rss_mib() - before < 16  # leaked: > 100 MiB


#: Found by the lock-step harness (fuzz_kcp_c): a PUSH whose sn is 2**31 ahead of the
#: receiver (wire fields: conv 0x00010001, cmd 81, frg 0, wnd 1024, sn 0x80000000, 18 bytes).
#: The pure engine unwrapped it to "2**31 behind" and acked it; ikcp compares against the
#: window's end and does not, so the engines' bytes differed.
FAR_PUSH = bytes.fromhex("0100010051000004e7610a00000000800100002012000000") + bytes(18)


@pytest.mark.parametrize("engine", ["python", "c"])
def test_a_push_half_the_sequence_space_away_is_not_acked(engine: str) -> None:
    if engine == "c":
        pytest.importorskip("siokcp")
    from ratbond import kcp

    sent: list[bytes] = []
    session = kcp.create(1 << 16 | 1, sent.append, engine)  # type: ignore[arg-type]
    session.update(1000)
    assert session.input(FAR_PUSH) == 0
    session.update(1200)
    session.flush()
    assert sent == []  # no ACK for it, no data from it
    assert session.recv() is None


def test_far_push_through_the_lock_step_harness() -> None:
    pytest.importorskip("siokcp")
    from fuzz import fuzz_kcp

    fuzz_kcp.twin(bytes.fromhex("0100010052000004cc610a0000000000b000000000000000") + FAR_PUSH
                  + b"\xff\x00" + bytes.fromhex(
                      "01000100520100000004e7610a000f000009e8000000000000"))
