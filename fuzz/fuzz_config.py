"""Fuzz the TOML loaders: a config file for either role, and the server's clients file.

Input byte 0 picks the loader (server settings, client settings, clients file); the rest
is the file's bytes.  Invariant: the only exception is the loader's documented error
(``ConfigError`` / ``ClientsFileError``, both ``ValueError``s with a message), never a
``KeyError``, ``TypeError``, ``OverflowError`` or a traceback.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from fuzz._common import fuzz, instrumented

with instrumented(__name__):
    from ratbond import clients, config

_DIR = tempfile.mkdtemp(prefix="ratbond-fuzz-config-")
_PATH = os.path.join(_DIR, "ratbond.toml")
atexit.register(shutil.rmtree, _DIR, ignore_errors=True)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    with open(_PATH, "wb") as handle:
        handle.write(data[1:])
    which = data[0] % 3
    try:
        if which == 2:
            loaded = clients.load_clients(_PATH)
            assert isinstance(loaded, clients.ClientsFile)
            return
        options = config.load_toml(_PATH)
        if which == 0:
            config.server_settings(options, {})
        else:
            config.client_settings(options, {})
    except (config.ConfigError, clients.ClientsFileError) as exc:
        assert str(exc), "an error without a message"


if __name__ == "__main__":
    fuzz(test_one_input)
