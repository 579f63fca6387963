"""Loading, stretching and hiding the secret; channel configuration from the flags."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ratbond.crypto import (
    ChannelConfig,
    ChannelMode,
    ClientChannel,
    ConfigError,
    NotConnectedError,
    Secret,
    SecretError,
    ServerChannel,
    load_secret,
)
from tests.unit.test_crypto_support import Pair, make_config

VALUE = "correct horse battery staple"


def test_sources_and_precedence(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"from the file\n")
    env = {"RATBOND_SECRET": "from the env"}
    assert load_secret(VALUE, None, env) == Secret(VALUE.encode())
    assert load_secret(None, str(path), env) == Secret(b"from the file")
    assert load_secret(None, None, env) == Secret(b"from the env")
    assert load_secret(None, None, {}) is None
    path.write_bytes(b"  keeps inner and leading space \r\n\n")
    assert load_secret(None, str(path), {}) == Secret(b"  keeps inner and leading space ")


@pytest.mark.parametrize(
    ("secret", "content", "env", "message"),
    [
        ("a", b"x", {}, "not both"),
        ("  ", None, {}, "--secret is empty"),
        (None, b"\n", {}, "is empty"),
        (None, None, {"RATBOND_SECRET": ""}, "RATBOND_SECRET is empty"),
    ],
)
def test_bad_sources_name_the_source(
    tmp_path: Path, secret: str | None, content: bytes | None, env: dict[str, str], message: str
) -> None:
    path = None
    if content is not None:
        (tmp_path / "s").write_bytes(content)
        path = str(tmp_path / "s")
    with pytest.raises(SecretError, match=message):
        load_secret(secret, path, env)


def test_unreadable_file_names_the_path_not_the_value(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(SecretError, match="cannot read --secret-file") as info:
        load_secret(None, missing, {})
    assert missing in str(info.value)
    with pytest.raises(SecretError, match="cannot read"):
        load_secret(None, str(tmp_path), {})  # a directory


def test_secret_never_shows_itself() -> None:
    secret = Secret(VALUE.encode())
    assert VALUE not in repr(secret) and VALUE not in str(secret) and VALUE not in f"{secret}"
    assert "redacted" in repr(secret)
    with pytest.raises(TypeError):
        pickle.dumps(secret)
    with pytest.raises(TypeError):
        hash(secret)
    with pytest.raises(SecretError):
        Secret(b"")


def test_from_options_modes_and_errors() -> None:
    with pytest.raises(ConfigError, match="--aes needs --secret"):
        ChannelConfig.from_options(aes=True, secret=None)
    with pytest.raises(ConfigError, match="unknown cipher"):
        ChannelConfig.from_options(aes=False, secret=None, cipher="rot13")
    assert ChannelConfig.from_options(aes=False, secret=None).mode is ChannelMode.PLAINTEXT
    secret = Secret(VALUE.encode())
    authenticated = ChannelConfig.from_options(aes=False, secret=secret)
    encrypted = ChannelConfig.from_options(aes=True, secret=secret, cipher="aes-256-gcm")
    assert authenticated.mode is ChannelMode.AUTHENTICATED
    assert encrypted.mode is ChannelMode.ENCRYPTED and encrypted.cipher == "aes-256-gcm"
    expected = Scrypt(salt=b"ratbond psk v1", length=32, n=2**16, r=8, p=1).derive(
        VALUE.encode())
    assert authenticated.psk == encrypted.psk == expected


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="32-byte"):
        ChannelConfig(ChannelMode.ENCRYPTED, b"short")
    with pytest.raises(ConfigError, match="32-byte"):
        ChannelConfig(ChannelMode.AUTHENTICATED, None)
    with pytest.raises(ConfigError, match="no key"):
        ChannelConfig(ChannelMode.PLAINTEXT, bytes(32))


def test_keys_absent_from_reprs_and_errors() -> None:
    psk = bytes(range(100, 132))
    config = make_config(ChannelMode.ENCRYPTED, psk=psk)
    pair = Pair(config)
    pair.establish()
    keys = next(iter(pair.server._keys.values()))
    texts = [repr(config), str(config), repr(pair.client), repr(pair.server), repr(keys),
             repr(pair.client.stats), repr(pair.client_events), repr(pair.server_events)]
    try:
        ClientChannel(config).seal(1, b"x", 0.0)
    except NotConnectedError as exc:
        texts.append(str(exc))
    try:
        ServerChannel(config).seal(1, 1, b"x", 0.0)
    except NotConnectedError as exc:
        texts.append(str(exc))
    for text in texts:
        assert psk.hex() not in text and repr(psk) not in text and str(list(psk)) not in text
    assert "psk" not in repr(config)


def test_a_genkey_key_is_not_stretched(monkeypatch: pytest.MonkeyPatch) -> None:
    from ratbond.crypto import stretch
    from ratbond.crypto.secret import generated_key
    from ratbond.keygen import new_key

    key = new_key().encode()
    slow = stretch(Secret(b"x" + key[1:-1] + b"x"))  # 44 characters but not base64 "...="
    calls: list[int] = []

    def counting_scrypt(**kwargs: int | bytes) -> Scrypt:
        calls.append(1)
        return Scrypt(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("ratbond.crypto.secret.Scrypt", counting_scrypt)
    psk = stretch(Secret(key))
    assert calls == [] and len(psk) == 32
    assert psk == stretch(Secret(key)) and psk not in key  # deterministic, not the raw key
    assert generated_key(key) is not None
    for shaped_by_hand in (key[:-1] + b"A", key[:-2] + b"==", key + b"A", b"!" + key[1:],
                           VALUE.encode()):
        assert generated_key(shaped_by_hand) is None
    stretch(Secret(VALUE.encode()))
    assert calls == [1] and slow != psk
