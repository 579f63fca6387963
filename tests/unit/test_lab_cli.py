"""``ratbond lab`` / ``ratbond demo`` argument handling that needs no root."""

from __future__ import annotations

import os

import pytest

from ratbond.cli import main


def test_non_root_gets_a_clear_message(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["demo"]) == 1
    assert "needs root" in capsys.readouterr().err
    assert main(["lab", "up", "--links", "20:40ms"]) == 1
    assert "needs root" in capsys.readouterr().err


def test_bad_links_name_the_value(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["lab", "up", "--links", "20:40ms,5:fast"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --links" in err and "'5:fast'" in err and "'fast'" in err


def test_bad_link_change_values(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, named in ((["--loss", "lots"], "'lots'"), (["--rate", "0"], "'0'"),
                        (["--delay", "soon"], "'soon'")):
        with pytest.raises(SystemExit):
            main(["lab", "link", "1", *argv])
        assert named in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["lab", "link", "1", "--blackhole", "--restore"])
    assert "not allowed with" in capsys.readouterr().err


def test_demo_seconds_must_be_whole_and_positive(capsys: pytest.CaptureFixture[str]) -> None:
    # iperf3 reads "-t 0.5" as 0, which means "run forever": refuse before building anything.
    for value, named in (("1.5", "'1.5': give whole seconds"), ("0", "'0': must be at least 1")):
        with pytest.raises(SystemExit) as info:
            main(["demo", "--seconds", value])
        assert info.value.code == 2
        assert named in capsys.readouterr().err
