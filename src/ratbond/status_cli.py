"""``ratbond status``: the running tunnel's paths in the terminal, and an exit code for scripts.

Reads ``/status.json`` of a running client or server (stdlib ``urllib`` only) and prints the
same fixed-width table as the ``/status`` page.  Exit code: 0 when the tunnel is up (every
known path up), 1 when degraded (some path down), 2 when down (no path up) or unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ratbond.status.model import DEGRADED, UP, StatusModel, from_dict, to_dict
from ratbond.status.server import TokenError, load_token
from ratbond.status.text import render_text

DEFAULT_URL = "http://127.0.0.1:8091"
EXIT_UP, EXIT_DEGRADED, EXIT_DOWN = 0, 1, 2
_TIMEOUT_S = 5.0
_CLEAR = "\x1b[H\x1b[2J"


class FetchError(Exception):
    """The status endpoint could not be read (the message says why, for the user)."""


Fetcher = Callable[[str, "str | None"], Any]


def status_url(base: str) -> str:
    """``/status.json`` under the given URL, unless the URL already names it."""
    base = base.rstrip("/")
    if "://" not in base:
        base = "http://" + base
    return base if base.endswith("/status.json") else base + "/status.json"


def fetch_json(url: str, token: str | None) -> Any:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise FetchError(f"{url}: a token is required or was refused "
                             "(--token-file FILE)") from exc
        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise FetchError(f"{url}: cannot connect: {exc.reason}") from exc
    except (OSError, ValueError) as exc:
        raise FetchError(f"{url}: {exc}") from exc


def exit_code(model: StatusModel) -> int:
    return {UP: EXIT_UP, DEGRADED: EXIT_DEGRADED}.get(model.state, EXIT_DOWN)


def show_once(url: str, token: str | None, *, as_json: bool,
              fetch: Fetcher = fetch_json) -> tuple[int, str, str]:
    """Fetch and format one view: the exit code, the text to print and an error line."""
    try:
        data = fetch(url, token)
    except FetchError as exc:
        return EXIT_DOWN, "", f"ratbond status: {exc}\n"
    if not isinstance(data, dict):
        return EXIT_DOWN, "", f"ratbond status: {url}: not a status document\n"
    model = from_dict(data)
    if as_json:
        return exit_code(model), json.dumps(to_dict(model), indent=2) + "\n", ""
    return exit_code(model), render_text(model), ""


def run(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None,
        fetch: Fetcher = fetch_json, sleep: Callable[[float], None] = time.sleep) -> int:
    """Entry point of ``ratbond status``."""
    out = out or sys.stdout
    err = err or sys.stderr
    token = None
    if args.token_file is not None:
        try:
            token = load_token(Path(args.token_file))
        except TokenError as exc:
            print(f"ratbond status: --token-file {exc}", file=err)
            return EXIT_DOWN
    url = status_url(args.url)
    count = 0
    while True:
        code, text, error = show_once(url, token, as_json=args.json, fetch=fetch)
        if args.watch:  # redraw in place; an error stays on screen until the next refresh
            out.write(_CLEAR + text + error)
        else:
            out.write(text)
            err.write(error)
        out.flush()
        count += 1
        if not args.watch or (args.count and count >= args.count):
            return code
        try:
            sleep(args.interval)
        except KeyboardInterrupt:
            return code


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of seconds > 0")
    return value


def add_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``ratbond status`` on the main parser's subparsers."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "status", help="show a running client's or server's paths (exit 0 up, 1 degraded, "
                       "2 down)",
        description="Print the paths of a running ratbond with their rates and RTT. Exit code "
                    "0: every known path up; 1: some path down; 2: no path up or unreachable.")
    p.add_argument("--url", default=DEFAULT_URL,
                   help=f"the status page of the client or server (default {DEFAULT_URL})")
    p.add_argument("--json", action="store_true", help="print the status model as JSON")
    p.add_argument("--watch", action="store_true", help="refresh in place until Ctrl-C")
    p.add_argument("--interval", type=_positive, default=1.0, metavar="SECONDS",
                   help="refresh period with --watch (default 1)")
    p.add_argument("--count", type=int, default=0, metavar="N",
                   help="with --watch, stop after N refreshes (default: never)")
    p.add_argument("--token-file", metavar="FILE", default=None,
                   help="bearer token for a status page started with --http-token-file")
    p.set_defaults(handler=run)
    return p
