"""``ratbond check-config`` and the annotated example configs under examples/."""

from __future__ import annotations

from pathlib import Path

import pytest

from ratbond.config import client_settings, load_toml
from ratbond.deploy_cli import detect_role, effective_settings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _real_example(tmp_path: Path, name: str) -> Path:
    """The example with its secret file made real (it names /etc/ratbond.key)."""
    key = tmp_path / "key"
    key.write_text("an example secret\n")
    key.chmod(0o600)
    path = tmp_path / name
    path.write_text((EXAMPLES / name).read_text().replace("/etc/ratbond.key", str(key)))
    return path


def _main(argv: list[str]) -> int:
    from ratbond.cli import main

    return main(argv)


@pytest.mark.parametrize(("name", "role"), [("client.toml", "client"), ("server.toml", "server")])
def test_examples_pass_check_config(tmp_path: Path, name: str, role: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = _real_example(tmp_path, name)
    assert _main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"valid {role} configuration" in out
    assert "aes = true" in out
    assert "an example secret" not in out  # the Secret type redacts itself
    if role == "server":
        assert "nat = true" in out and 'routes = ["192.168.99.0/24"]' in out
    else:
        assert 'connect = "vps.example.net:12345"' in out and 'wans = ["eth1", "eth2"]' in out


def test_invalid_file_exits_2_with_the_start_up_message(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('connect-addr = "vps:1"\nmux = 99\n')
    assert _main(["check-config", str(path)]) == 2
    assert f"{path}: mux: 99 is outside the allowed range 1..16" in capsys.readouterr().err
    # A server key in a client's file, named like at start-up.
    path.write_text('connect-addr = "vps:1"\nnat = true\n')
    assert _main(["check-config", str(path)]) == 2
    assert "not a client setting (it is a server setting)" in capsys.readouterr().err


def test_role_from_the_keys_or_given(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert detect_role(["connect-addr", "mux"]) == "client"
    assert detect_role(["listen-addr"]) == "server"
    path = tmp_path / "c.toml"
    path.write_text("tunnel-id = 7\n")
    assert _main(["check-config", "--role", "client", str(path)]) == 2
    assert "--connect-addr: required" in capsys.readouterr().err
    assert _main(["check-config", str(path)]) == 0
    assert "tunnel-id = 7" in capsys.readouterr().out


def test_effective_settings_show_every_field(tmp_path: Path) -> None:
    path = _real_example(tmp_path, "client.toml")
    settings = client_settings(load_toml(str(path)), {})
    lines = effective_settings(settings)
    assert any(line.startswith("secret = ") and "redacted" in line.lower() for line in lines)
    assert "tunnel-ip = \"10.10.10.0/30\"" in lines
