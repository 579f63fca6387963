"""OpenWrt files under contrib/openwrt: shell syntax, the UCI -> TOML converter."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from ratbond.config import client_settings, load_toml

OPENWRT = Path(__file__).resolve().parents[2] / "contrib" / "openwrt"

UCI_SHOW = """\
ratbond.main=client
ratbond.main.enabled='1'
ratbond.main.connect_addr='vps.example.net:12345'
ratbond.main.tunnel_id='660'
ratbond.main.aes='1'
ratbond.main.secret_file='SECRET'
ratbond.main.wan='eth1' 'wwan0'
ratbond.main.backup_wan='wwan0'
ratbond.main.balance='consistent'
ratbond.main.dead_after='1500ms'
ratbond.main.policy_routing='0'
ratbond.main.tune_sysctls='1'
ratbond.vps=server
ratbond.vps.nat='yes'
"""


def _converter() -> ModuleType:
    path = str(OPENWRT / "ratbond-uci2toml")
    loader = importlib.machinery.SourceFileLoader("ratbond_uci2toml", path)
    spec = importlib.util.spec_from_loader("ratbond_uci2toml", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["ratbond.init", "ratbond.hotplug"])
def test_shell_scripts_parse(name: str) -> None:
    sh = shutil.which("sh")
    assert sh is not None
    done = subprocess.run([sh, "-n", str(OPENWRT / name)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr


def test_init_script_is_procd_and_reloads_on_config_change() -> None:
    text = (OPENWRT / "ratbond.init").read_text()
    assert text.startswith("#!/bin/sh /etc/rc.common\n")
    assert "USE_PROCD=1" in text and "procd_add_reload_trigger ratbond" in text
    assert "procd_set_param respawn" in text


def test_uci_section_becomes_toml_ratbond_accepts(tmp_path: Path) -> None:
    module = _converter()
    key = tmp_path / "key"
    key.write_text("s")
    key.chmod(0o600)
    sections = module.parse_uci_show(UCI_SHOW.replace("SECRET", str(key)))
    assert sections["main"]["wan"] == ["eth1", "wwan0"]
    text = module.to_toml(sections["main"])
    assert "enabled" not in text and "policy_routing" not in text
    assert "aes = true" in text and "tune_sysctls = true" in text
    path = tmp_path / "main.toml"
    path.write_text(text)
    settings = client_settings(load_toml(str(path)), {})
    assert settings.aes and settings.tune_sysctls
    assert settings.wans == ("eth1", "wwan0") and settings.backup_wans == ("wwan0",)
    assert settings.dead_after == 1.5 and settings.connect.host == "vps.example.net"
    assert module.to_toml(sections["vps"]) == "nat = true\n"


def test_converter_command_line() -> None:
    script = str(OPENWRT / "ratbond-uci2toml")
    done = subprocess.run([sys.executable, script, "vps", "-"], input=UCI_SHOW,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout == "nat = true\n"
    missing = subprocess.run([sys.executable, script, "nope", "-"], input=UCI_SHOW,
                             capture_output=True, text=True, check=False)
    assert missing.returncode == 1 and "no client or server section 'nope'" in missing.stderr


def test_example_uci_config_sections_are_typed() -> None:
    text = (OPENWRT / "ratbond.config").read_text()
    assert "config client 'main'" in text
    assert "option connect_addr" in text
