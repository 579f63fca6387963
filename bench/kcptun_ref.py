"""kcptun (Go, kcp-go + smux) over one lab link: the reference point for ratbond's figures.

Run as root from the repository root::

    python3 -m bench.kcptun_ref [--seconds 5] [--emulated 30/10:20ms]

```
  [client ns] iperf3 -c 127.0.0.1:L -> kcptun-client -l 127.0.0.1:L   (UDP from wan<i>)
        ── link i ── [isp ns, SNAT] ──
  [server ns] kcptun-server -l :U -t 127.0.0.1:P -> iperf3 -s 127.0.0.1:P
```

kcptun-client's UDP socket is not bound to a WAN address, and the client's main table
has no default route (by design), so while it runs a rule ``to <server> lookup 100+i``
steers it out of link i; the rule is removed afterwards. ``--mode fast3``, ``--crypt
none|aes``, other flags at kcptun's defaults (FEC 10/3, compression on), as users run it.
Measured over a direct veth (CPU-bound) and over an emulated link, 1 and 8 TCP flows,
both directions; raw iperf3 over the same link is measured too, for the ratios.
Writes ``bench/results/kcptun_ref.json`` (+ ``.png``).
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from bench.common import (
    MeasureError,
    free_port,
    iperf3,
    iperf3_client,
    iperf3_server,
    mbit,
    write_bar_plot,
    write_result,
)
from ratbond.lab.netns import Namespace, stop_process
from ratbond.lab.spec import LinkSpec
from ratbond.lab.topology import Lab, table_id

KEY = "ratbond-bench"
MODE = "fast3"
# "defaults": kcptun as users run it (FEC 10/3, compression, windows 128/512);
# "lean": no FEC, no compression, 1024-packet windows - kcptun at its fastest, the fair
# comparison for a tunnel that does neither.
PROFILES: dict[str, tuple[str, ...]] = {
    "defaults": (),
    "lean": ("--nocomp", "--datashard", "0", "--parityshard", "0", "--sndwnd", "1024",
             "--rcvwnd", "1024"),
}


def _wait_listening(ns: Namespace, port: int, udp: bool, proc: subprocess.Popen[bytes],
                    what: str) -> None:
    proto = "-lun" if udp else "-ltn"
    deadline = time.monotonic() + 10
    while not ns.run("ss", "-H", proto, f"sport = :{port}", check=False).stdout.strip():
        if proc.poll() is not None:
            raise MeasureError(f"{what} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise MeasureError(f"{what} not listening on {port}")
        time.sleep(0.02)


@contextlib.contextmanager
def _route_to_server_via(lab: Lab, link_index: int) -> Iterator[None]:
    rule = ["rule", "add", "to", lab.server_public_ip, "lookup", str(table_id(link_index)),
            "pref", "9000"]
    lab.client.run("ip", *rule)
    try:
        yield
    finally:
        lab.client.run("ip", *["del" if w == "add" else w for w in rule], check=False)


@contextlib.contextmanager
def kcptun_tunnel(lab: Lab, link_index: int, crypt: str,
                  profile: str = "defaults") -> Iterator[int]:
    """kcptun between the lab's client and server over link ``link_index``; yields the
    client-side TCP port that leads to an iperf3 server in the server namespace."""
    common = ["--crypt", crypt, "--mode", MODE, "--key", KEY, "--quiet", *PROFILES[profile]]
    with iperf3_server(lab.server, bind="127.0.0.1") as iperf_port, \
            _route_to_server_via(lab, link_index):
        udp_port = free_port(lab.server)
        server = lab.server.popen("kcptun-server", "-l", f":{udp_port}", "-t",
                                  f"127.0.0.1:{iperf_port}", *common,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client: subprocess.Popen[bytes] | None = None
        try:
            _wait_listening(lab.server, udp_port, True, server, "kcptun-server")
            local_port = free_port(lab.client)
            client = lab.client.popen("kcptun-client", "-l", f"127.0.0.1:{local_port}", "-r",
                                      f"{lab.server_public_ip}:{udp_port}", *common,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _wait_listening(lab.client, local_port, False, client, "kcptun-client")
            yield local_port
        finally:
            if client is not None:
                stop_process(client)
            stop_process(server)


def run_kcptun(lab: Lab, link_index: int, crypt: str, flows: int, seconds: float, *,
               reverse: bool = False, profile: str = "defaults") -> dict[str, Any]:
    """TCP goodput through kcptun over one link (``reverse``: server -> client).

    Returns ``bits_per_second`` (iperf3 receiver side), the settings, and ``raw``.
    """
    with kcptun_tunnel(lab, link_index, crypt, profile) as port:
        result = iperf3_client(lab.client, "127.0.0.1", port, seconds=seconds,
                               parallel=flows, reverse=reverse)
    return {"tool": "kcptun", "link": link_index, "spec": lab.links[link_index - 1].to_text(),
            "crypt": crypt, "mode": MODE, "profile": profile,
            "flags": list(PROFILES[profile]), "flows": flows,
            "direction": "down" if reverse else "up", **result}


def run(emulated: LinkSpec, seconds: float) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    with Lab.up([LinkSpec.parse("direct"), emulated]) as lab:
        for i in (1, 2):
            for reverse in (False, True):
                direction = "down" if reverse else "up"
                raw = iperf3(lab.client, lab.server, lab.server_public_ip, seconds=seconds,
                             reverse=reverse, bind=lab.wan_address(i))
                base = raw["bits_per_second"]
                rows.append({"tool": "raw-tcp", "link": i, "spec": lab.links[i - 1].to_text(),
                             "direction": direction, "flows": 1, "mbit": mbit(base),
                             "bits_per_second": base, "retransmits": raw["retransmits"]})
                print(f"{rows[-1]['spec']:<12} {direction:<4} raw TCP               1 flow "
                      f" {mbit(base):>8.2f} Mbit/s", flush=True)
                for profile in PROFILES:
                    for crypt in ("none", "aes"):
                        for flows in (1, 8):
                            row = run_kcptun(lab, i, crypt, flows, seconds, reverse=reverse,
                                             profile=profile)
                            row["ratio_to_raw"] = round(row["bits_per_second"] / base, 3)
                            row["mbit"] = mbit(row["bits_per_second"])
                            print(f"{row['spec']:<12} {direction:<4} kcptun {profile:<8} "
                                  f"{crypt:<4} {flows} flow{'s' if flows > 1 else ' '} "
                                  f"{row['mbit']:>8.2f} Mbit/s ({row['ratio_to_raw']:.0%} of "
                                  "raw)", flush=True)
                            rows.append(row)
    return {"bench": "kcptun_ref", "seconds": seconds, "mode": MODE,
            "profiles": {k: list(v) for k, v in PROFILES.items()},
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": rows}


def plot(data: dict[str, Any]) -> None:
    runs = [r for r in data["runs"] if r["tool"] == "kcptun"]
    labels = sorted({f"{r['spec']} {r['direction']}\n{r['flows']} flow(s)" for r in runs})
    series: dict[str, Sequence[float]] = {}
    for profile in PROFILES:
        for crypt in ("none", "aes"):
            by_label = {f"{r['spec']} {r['direction']}\n{r['flows']} flow(s)": r["mbit"]
                        for r in runs if r["crypt"] == crypt and r["profile"] == profile}
            series[f"{profile}, crypt {crypt}"] = [by_label.get(x, 0.0) for x in labels]
    write_bar_plot("kcptun_ref", f"kcptun {MODE} TCP goodput through one link", labels,
                   series, "Mbit/s (log)", log=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.kcptun_ref", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--emulated", type=LinkSpec.parse, default=LinkSpec.parse("30/10:20ms"),
                   help="the emulated link kcptun also runs over")
    args = p.parse_args(argv)
    data = run(args.emulated, args.seconds)
    print(f"wrote {write_result('kcptun_ref', data)}")
    plot(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
