"""Secret files (a warning when others can read them), ``ratbond genkey``, the token file."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

import ratbond.runtime.server
from ratbond.config import ConfigError, read_token, server_settings
from ratbond.config import ServerSettings as _ServerSettings
from ratbond.crypto.secret import permission_warning


def secret_file(tmp_path: Path, mode: int, name: str = "ratbond.key") -> Path:
    path = tmp_path / name
    path.write_text("k3y\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602])
def test_open_secret_file_warns_like_ssh(tmp_path: Path, mode: int) -> None:
    path = secret_file(tmp_path, mode)
    settings = server_settings({"secret-file": str(path), "aes": True}, {})
    assert settings.warnings == (
        f"--secret-file {path}: permissions {mode:04o} are too open (group or others can "
        f"read or change the secret); fix with: chmod 600 {path}",)


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_private_secret_file_is_quiet(tmp_path: Path, mode: int) -> None:
    path = secret_file(tmp_path, mode)
    assert server_settings({"secret-file": str(path)}, {}).warnings == ()
    assert permission_warning(str(path)) is None


def test_warning_is_printed_at_start(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = secret_file(tmp_path, 0o644)
    started: list[_ServerSettings] = []

    def fake_run(settings: _ServerSettings) -> int:
        started.append(settings)
        return 0

    monkeypatch.setattr(ratbond.runtime.server, "run_server", fake_run)
    from ratbond.cli import main

    assert main(["server", "--aes", f"--secret-file={path}"]) == 0
    assert len(started) == 1
    assert capsys.readouterr().err == (
        f"ratbond server: warning: --secret-file {path}: permissions 0644 are too open (group "
        f"or others can read or change the secret); fix with: chmod 600 {path}\n")


def test_genkey_prints_32_random_bytes_base64(capsys: pytest.CaptureFixture[str]) -> None:
    from ratbond.cli import main

    assert main(["genkey"]) == 0
    first = capsys.readouterr().out
    assert main(["genkey"]) == 0
    second = capsys.readouterr().out
    assert first.endswith("\n") and first.count("\n") == 1
    assert len(base64.b64decode(first.strip(), validate=True)) == 32
    assert first != second


def test_genkey_output_is_0600_and_never_overwrites(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ratbond.cli import main

    path = tmp_path / "ratbond.key"
    old_umask = os.umask(0)  # even with no umask the file must not be readable by others
    try:
        assert main(["genkey", "--output", str(path)]) == 0
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_text()
    assert len(base64.b64decode(key.strip(), validate=True)) == 32
    assert capsys.readouterr().out == ""  # the key is not echoed
    assert main(["genkey", "-o", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"ratbond genkey: {path} exists; not overwriting it (remove it first if you mean to "
        "replace the key on both ends)\n")
    assert path.read_text() == key
    assert main(["genkey", "-o", str(tmp_path / "missing" / "k")]) == 1
    assert "cannot create" in capsys.readouterr().err
    # and the file works as a secret, without a warning
    assert server_settings({"secret-file": str(path), "aes": True}, {}).warnings == ()


def test_token_file_checked_at_start(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("  s3cr3t-token\n")
    token.chmod(0o600)
    settings = server_settings({"http-token-file": str(token)}, {})
    assert settings.http_token_file == token
    assert read_token(token) == "s3cr3t-token"
    assert settings.warnings == ()
    assert server_settings({}, {}).http_token_file is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "--http-token-file: cannot read '{path}': No such file or directory"),
        (b"\n \n", "--http-token-file: '{path}' is empty"),
        (b"x" * 5000, "--http-token-file: '{path}' is larger than 4096 bytes; is it the "
         "right file?"),
    ],
)
def test_bad_token_files(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        server_settings({"http-token-file": str(path)}, {})
    assert str(info.value) == message.format(path=path)


def test_readable_token_file_warns(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    token.chmod(0o644)
    assert server_settings({"http-token-file": str(token)}, {}).warnings == (
        f"--http-token-file {token}: permissions 0644 are too open (group or others can read "
        f"or change the secret); fix with: chmod 600 {token}",)


def test_config_file_holding_the_secret_warns_when_open(tmp_path: Path) -> None:
    from ratbond.cli import _options, build_parser

    config = tmp_path / "ratbond.toml"
    config.write_text('secret = "s3cret"\naes = true\n')
    config.chmod(0o644)
    args = build_parser().parse_args(["server", f"--config={config}"])
    assert server_settings(_options(args), {}).warnings == (
        f"--config {config}: permissions 0644 are too open (group or others can read or "
        f"change the secret); fix with: chmod 600 {config}",)
    config.chmod(0o600)
    assert server_settings(_options(args), {}).warnings == ()
    config.write_text("aes = false\n")  # no secret in it: its mode is nobody's business
    config.chmod(0o644)
    assert server_settings(_options(args), {}).warnings == ()
