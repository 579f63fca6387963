"""The fixed-width text view: ``/status`` and ``ratbond status`` print exactly this.

One table row per path (rates in Mbit/s, RTT in ms), a summary on top, drops, reorder and
counters below.  Anything unknown prints as a dash, so an older runtime still gives a readable
table.  Deterministic for a given model (golden-text tested).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from ratbond.status.model import ClientStatus, PathStatus, SessionStatus, StatusModel

DASH = "\u2013"  # en dash: "no value", distinct from a negative number
WIDTH = 100

# (title, width, right-aligned); WAN shows the remote address on the server, its width follows
# the longest cell
_COLUMNS: tuple[tuple[str, int, bool], ...] = (
    ("PATH", 4, True), ("WAN", 10, False), ("STATE", 10, False), ("SINCE", 6, True),
    ("RTT ms", 6, True), ("LOSS", 5, True), ("CAP", 6, True), ("TX 1s", 6, True),
    ("RX 1s", 6, True), ("TX 10s", 6, True), ("RX 10s", 6, True), ("REASON", 0, False),
)


def fmt_duration(seconds: float | None) -> str:
    """12s, 4m05s, 3h07m, 2d04h: short enough for a table cell."""
    if seconds is None:
        return DASH
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def fmt_mbit(bytes_per_s: float | None) -> str:
    return DASH if bytes_per_s is None else f"{bytes_per_s * 8 / 1e6:.2f}"


def fmt_bits(bits_per_s: float | None) -> str:
    return DASH if bits_per_s is None else f"{bits_per_s / 1e6:.1f}"


def fmt_number(value: float | None, digits: int = 1) -> str:
    if value is None:
        return DASH
    if float(value).is_integer() and digits == 0:
        return str(int(value))
    return f"{value:.{digits}f}"


def fmt_percent(fraction: float | None) -> str:
    return DASH if fraction is None else f"{fraction * 100:.1f}%"


def fmt_count(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"


def _text(value: str | None) -> str:
    return value or DASH


_WAN_COLUMN = 1
_MAX_WAN_WIDTH = 24


def _row(cells: Sequence[str], wan_width: int = 10) -> str:
    parts = []
    for index, ((_title, column_width, right), cell) in enumerate(
            zip(_COLUMNS, cells, strict=True)):
        width = wan_width if index == _WAN_COLUMN else column_width
        if width == 0:
            parts.append(cell)
        elif right:
            parts.append(cell.rjust(width))
        else:
            parts.append(cell[:width].ljust(width))
    return "  ".join(parts).rstrip()


def path_cells(path: PathStatus) -> list[str]:
    r = path.rates
    return [str(path.path_id), _text(path.wan or path.remote), path.state,
            fmt_duration(path.since_s),
            fmt_number(path.rtt_ms), fmt_percent(path.loss), fmt_bits(path.capacity_bps),
            fmt_mbit(r.tx_1s), fmt_mbit(r.rx_1s), fmt_mbit(r.tx_10s), fmt_mbit(r.rx_10s),
            "" if path.up else _text(path.down_reason)]


def path_table(paths: Iterable[PathStatus], *, total: bool = True) -> list[str]:
    rows = list(paths)
    cells = [path_cells(p) for p in rows]
    wan_width = min(_MAX_WAN_WIDTH, max([10, *(len(c[_WAN_COLUMN]) for c in cells)]))
    lines = [_row([title for title, _w, _r in _COLUMNS], wan_width)]
    lines += [_row(c, wan_width) for c in cells]
    if not rows:
        lines.append("   (no path)")
    elif total:
        up = sum(1 for p in rows if p.up)

        def add(name: str) -> float | None:
            known = [getattr(p.rates, name) for p in rows if getattr(p.rates, name) is not None]
            return sum(known) if known else None

        lines.append(_row(["", "total", f"{up}/{len(rows)} up", "", "", "", "",
                           fmt_mbit(add("tx_1s")), fmt_mbit(add("rx_1s")),
                           fmt_mbit(add("tx_10s")), fmt_mbit(add("rx_10s")), ""], wan_width))
    return lines


def wrap_items(title: str, items: Sequence[str], indent: str = "") -> list[str]:
    """``title: a  b  c`` over as many lines as needed, never splitting an item."""
    if not items:
        return [f"{indent}{title}: {DASH}"]
    lines = [f"{indent}{title}: {items[0]}"]
    for item in items[1:]:
        if len(lines[-1]) + 2 + len(item) > WIDTH:
            lines.append(f"{indent}  {item}")
        else:
            lines[-1] += f"  {item}"
    return lines


def named_numbers(title: str, values: Mapping[str, float], indent: str = "") -> list[str]:
    return wrap_items(title, [f"{name} {fmt_count(v)}" for name, v in values.items()], indent)


def drops_line(drops: Mapping[str, int], indent: str = "") -> list[str]:
    """Only the reasons that happened; the zeros are in the JSON and the metrics."""
    nonzero = {name: count for name, count in drops.items() if count}
    if drops and not nonzero:
        return [f"{indent}drops: none"]
    return named_numbers("drops", nonzero, indent)


def _yes_no(value: bool | None) -> str:
    return DASH if value is None else ("yes" if value else "no")


def header(model: StatusModel) -> list[str]:
    t, c = model.tunnel, model.channel
    peer = (f"server {_text(model.server)}" if model.role != "server"
            else f"listen {_text(model.listen)}")
    lines = [
        f"ratbond {_text(model.role)} {_text(model.version)}  uptime "
        f"{fmt_duration(model.uptime_s)}  tunnel {model.state.upper()} "
        f"({model.totals.paths_up}/{model.totals.paths_known} paths up)",
        f"session {_text(model.session)}  {peer}  channel {_text(c.mode)}"
        + (f" {c.cipher}" if c.cipher else "") + f"  rekeys {fmt_number(c.rekeys, 0)}",
        f"tun {_text(t.device)} {_text(t.address)}  mtu {fmt_number(t.mtu, 0)}"
        + (f"  default route {_yes_no(t.default_route)}" if model.role != "server" else "")
        + f"  balance {_text(model.balance)}",
    ]
    return lines


def session_block(session: SessionStatus, paths: Sequence[PathStatus]) -> list[str]:
    flag = " (active)" if session.active else ""
    lines = [f"session {session.session}{flag}  client {_text(session.client)}  age "
             f"{fmt_duration(session.age_s)}  balance {_text(session.balance)}"]
    lines += path_table([p for p in paths if p.key in session.paths])
    lines += drops_line(session.drops, "  ") if session.drops else []
    lines += named_numbers("reorder", session.reorder, "  ") if session.reorder else []
    return lines


def clients_table(clients: Sequence[ClientStatus]) -> list[str]:
    """A server with ``--clients``: one line per client (name, TUN, state, paths, drops)."""
    width = max(6, *(len(c.name) for c in clients))
    lines = [f"{'client':<{width}}  {'tun':<9} {'state':<9} {'paths':>5}  {'session':<8}  "
             f"{'rx pkts':>9} {'tx pkts':>9}  spoofed"]
    for c in clients:
        lines.append(f"{c.name:<{width}}  {_text(c.device):<9} {c.state:<9} "
                     f"{c.paths_up:>2}/{c.paths_total:<2}  {_text(c.session):<8}  "
                     f"{c.counters.get('rx_packets', 0):>9} {c.counters.get('tx_packets', 0):>9}"
                     f"  {c.drops.get('spoofed_source', 0)}")
    return lines


def render_text(model: StatusModel) -> str:
    """The whole view; rates in Mbit/s (decimal), RTT in ms, loss in percent."""
    lines = header(model)
    lines.append("")
    if model.clients:
        lines += clients_table(model.clients)
        lines.append("")
    if model.role == "server" and model.sessions:
        grouped = {key for s in model.sessions for key in s.paths}
        for session in model.sessions:
            lines += session_block(session, model.paths)
            lines.append("")
        strays = [p for p in model.paths if p.key not in grouped]
        if strays:
            lines.append("paths without a session")
            lines += path_table(strays)
            lines.append("")
    else:
        lines += path_table(model.paths)
        lines.append("")
    if model.role != "server":
        wans = "  ".join(f"{name} {address}" for name, address in model.wans.items())
        lines.append(f"wans: {wans or DASH}")
    lines += drops_line(model.drops)
    if model.role != "server" or model.reorder:  # the server's are per session, above
        lines += named_numbers("reorder", model.reorder)
    lines += named_numbers("counters", model.counters)
    lines.append("CAP (capacity estimate) and rates in Mbit/s; rates over the last 1 s and 10 s")
    return "\n".join(lines) + "\n"
