"""The soak, short: every WAN event of ``bench/soak.py`` once under steady traffic.

``python3 -m bench.soak`` runs for an hour; this is its CI version (about 2.5 minutes, the
longest test of the suite): the demo's three links, hashed TCP transfers both ways, a ping
and a sequence-numbered UDP stream, and one event every 15 s in rotation -- link flap,
route flap, 5 s blackhole, new lease, 30 % loss burst, client kill -9 and restart, server
restart, rekey (every 10 s all along, through ``RATBOND_TEST_REKEY_AFTER``). It asserts
the soak's own pass criteria: no traceback, every transfer intact, RSS and fds flat per
process lifetime after warm-up, the tunnel back within each event's bound, nothing left
behind by a killed or stopped end.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench.soak import EVENTS, SoakConfig, run

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_a_three_minute_soak_passes_every_criterion(tmp_path: Path) -> None:
    config = SoakConfig(minutes=2.1, event_every=15.0, sample_every=10.0, warmup=20.0,
                        rekey_after=10.0, rate=300_000.0, transfer_seconds=6.0,
                        log_dir=tmp_path)
    result = run(config)
    (tmp_path / "soak.json").write_text(json.dumps(result, indent=1))
    summary = json.dumps({k: result[k] for k in ("checks", "back_s", "growth", "transfers",
                                                 "stale", "tracebacks")}, indent=1)[:6000]
    assert result["passed"], summary
    # The run really did what it claims: every kind of event, judged growth at both ends,
    # transfers both ways, rekeys seen, a kill -9 checked for leftovers.
    assert {e["event"] for e in result["events"]} == set(EVENTS), summary
    assert {g["role"] for g in result["growth"] if g["judged"]} == {"server", "client"}
    assert all(t["intact"] >= 2 for t in result["transfers"].values()), summary
    assert max(s["client"]["rekeys"] or 0 for s in result["samples"] if "client" in s) >= 1
    assert any(e["event"] == "kill-client" and e["exit"] == -9 for e in result["events"])
    assert result["seqstream"] is not None and result["seqstream"]["received"] > 0
