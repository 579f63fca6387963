"""The text view (``/status`` and ``ratbond status``) of recorded snapshots, exactly."""

from __future__ import annotations

from ratbond.status.model import Rates, StatusModel, build_model
from ratbond.status.text import fmt_duration, render_text
from tests.unit.test_status_snapshots import CLIENT_SNAPSHOT, SERVER_SNAPSHOT

CLIENT_RATES = {"1": Rates(125_000.0, 2_500_000.0, 120_000.0, 2_400_000.0),
                "2": Rates(0.0, 0.0, 10.0, None)}
SERVER_RATES = {"0000abcd/1": Rates(1e5, 2e5, 1e5, 2e5)}

CLIENT_TEXT = (
    "ratbond client 0.1.0  uptime 1h02m  tunnel DEGRADED (1/2 paths up)\n"
    "session 0000abcd  server vps.example.net:12345  channel encrypted chacha20-poly1305  rekeys 31\n"  # noqa: E501
    "tun tun660 10.10.10.1/30  mtu 1391  default route yes  balance consistent\n"
    "\n"
    "PATH  WAN         STATE        SINCE  RTT ms   LOSS     CAP   TX 1s   RX 1s  TX 10s  RX 10s  REASON\n"  # noqa: E501
    "   1  wan1        up           2m05s    41.0   0.1%    30.0    1.00   20.00    0.96   19.20\n"
    "   2  wan2        down            4s       \u2013      \u2013       \u2013    0.00    0.00    0.00       \u2013  silent\n"  # noqa: E501
    "      total       1/2 up                                       1.00   20.00    0.96   19.20\n"
    "\n"
    "wans: wan1 192.168.1.2  wan2 192.168.2.2\n"
    "drops: auth_failed 3  replayed 1\n"
    "reorder: duplicates 1  held 0  held_bytes 0  late 2  timeout_s 0.025\n"
    "counters: rx_datagrams 5120  tun_rx_packets 4096  tun_tx_packets 4000\n"
    "CAP (capacity estimate) and rates in Mbit/s; rates over the last 1 s and 10 s\n"
)

SERVER_TEXT = (
    "ratbond server 0.1.0  uptime 1d01h  tunnel DEGRADED (2/3 paths up)\n"
    "session 0000abcd  listen 0.0.0.0:12345  channel encrypted aes-256-gcm  rekeys \u2013\n"
    "tun tun660 10.10.10.2/30  mtu 1391  balance \u2013\n"
    "\n"
    "session 0000abcd (active)  client 203.0.113.7  age 1m01s  balance \u2013\n"
    "PATH  WAN                 STATE        SINCE  RTT ms   LOSS     CAP   TX 1s   RX 1s  TX 10s  RX 10s  REASON\n"  # noqa: E501
    "   1  203.0.113.7:40001   up           2m05s    41.0   0.1%    30.0    0.80    1.60    0.80    1.60\n"  # noqa: E501
    "   2  198.51.100.9:40002  up           2m05s    41.0   0.1%    30.0       \u2013       \u2013       \u2013       \u2013\n"  # noqa: E501
    "      total               2/2 up                                       0.80    1.60    0.80    1.60\n"  # noqa: E501
    "\n"
    "session 00001111  client \u2013  age 3s  balance \u2013\n"
    "PATH  WAN         STATE        SINCE  RTT ms   LOSS     CAP   TX 1s   RX 1s  TX 10s  RX 10s  REASON\n"  # noqa: E501
    "   1  \u2013           down         2m05s    41.0   0.1%    30.0       \u2013       \u2013       \u2013       \u2013  linkdown\n"  # noqa: E501
    "      total       0/1 up                                          \u2013       \u2013       \u2013       \u2013\n"  # noqa: E501
    "\n"
    "drops: none\n"
    "counters: tun_rx_packets 10\n"
    "CAP (capacity estimate) and rates in Mbit/s; rates over the last 1 s and 10 s\n"
)


def client_model() -> StatusModel:
    return build_model(CLIENT_SNAPSHOT, CLIENT_RATES)


def test_client_text_view_is_exact() -> None:
    assert render_text(client_model()) == CLIENT_TEXT


def test_server_text_view_groups_paths_by_session() -> None:
    assert render_text(build_model(SERVER_SNAPSHOT, SERVER_RATES)) == SERVER_TEXT


def test_an_empty_snapshot_still_renders() -> None:
    text = render_text(build_model({}))
    assert "tunnel DOWN (0/0 paths up)" in text and "(no path)" in text


def test_durations_are_short() -> None:
    assert [fmt_duration(s) for s in (None, 0, 59.9, 60, 3599, 3600, 86399, 90061)] == [
        "\u2013", "0s", "59s", "1m00s", "59m59s", "1h00m", "23h59m", "1d01h"]


def test_long_lists_wrap_between_items_only() -> None:
    from ratbond.status.text import WIDTH, wrap_items

    items = [f"reason_{i:02d} {i * 1000}" for i in range(30)]
    lines = wrap_items("drops", items)
    assert len(lines) > 1 and all(len(line) <= WIDTH for line in lines)
    assert lines[0].startswith("drops: reason_00 0  reason_01 1000")
    assert all(line.startswith("  reason_") for line in lines[1:])
    assert " ".join(lines).split() == ["drops:", *" ".join(items).split()]
