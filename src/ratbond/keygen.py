"""``ratbond genkey``: a fresh pre-shared secret, so nobody invents a weak one.

32 random bytes from the OS, base64 — the same strength as the PSK the secret is stretched
into.  With ``--output FILE`` the file is created with mode 0600 from the first byte (never
world-readable, not even for a moment) and an existing file is never overwritten: replacing
a key by accident would cut the tunnel until the other end gets the new one.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import sys
from typing import Any

KEY_BYTES = 32
KEY_FILE_MODE = 0o600


def new_key() -> str:
    """A new secret: ``KEY_BYTES`` random bytes, base64 (44 characters)."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def write_key_file(path: str, key: str) -> None:
    """Create ``path`` (mode 0600) holding ``key``; ``FileExistsError`` if it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                 KEY_FILE_MODE)
    try:
        os.fchmod(fd, KEY_FILE_MODE)  # the umask may only remove bits; make it exact anyway
        os.write(fd, (key + "\n").encode("ascii"))
    finally:
        os.close(fd)


def add_genkey_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "genkey", help="print a new random secret for --secret-file",
        description="Print 32 random bytes, base64, for --secret-file: "
                    "ratbond genkey > /etc/ratbond.key && chmod 600 /etc/ratbond.key")
    p.add_argument("--output", "-o", metavar="FILE",
                   help="write the secret to FILE (created with mode 0600; an existing file "
                        "is never overwritten) instead of printing it")
    p.set_defaults(handler=run_genkey)


def run_genkey(args: argparse.Namespace) -> int:
    key = new_key()
    if args.output is None:
        print(key)
        return 0
    try:
        write_key_file(args.output, key)
    except FileExistsError:
        print(f"ratbond genkey: {args.output} exists; not overwriting it (remove it first if "
              "you mean to replace the key on both ends)", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"ratbond genkey: cannot create {args.output}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    print(f"ratbond genkey: wrote a new secret to {args.output} (mode 0600); copy it to the "
          "other end the same way", file=sys.stderr)
    return 0
