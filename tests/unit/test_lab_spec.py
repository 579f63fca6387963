"""The link grammar users type for ``ratbond lab up --links`` (no root needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ratbond.lab.spec import LinkSpec, LinkSpecError, parse_links, parse_ms, parse_percent


def test_full_form() -> None:
    assert LinkSpec.parse("30/10:20ms:0.1%") == LinkSpec(30.0, 10.0, delay_ms=20.0, loss=0.001)


def test_symmetric_rate_and_delay() -> None:
    assert LinkSpec.parse("20:40ms") == LinkSpec(20.0, 20.0, delay_ms=40.0)


def test_jitter_queue_and_unlimited() -> None:
    spec = LinkSpec.parse("*/5:10ms:j2ms:q80ms")
    assert spec == LinkSpec(None, 5.0, delay_ms=10.0, jitter_ms=2.0, queue_ms=80.0)


def test_direct() -> None:
    spec = LinkSpec.parse("direct")
    assert spec.direct and spec.is_transparent and spec.down_mbit is None


@pytest.mark.parametrize(("text", "names"), [
    ("", "empty"),
    ("abc", "'abc'"),
    ("0:20ms", "'0'"),
    ("20/10/5", "'20/10/5'"),
    ("20:20s", "'20s'"),
    ("20:20ms:30ms", "given twice"),
    ("20:200%", "loss"),
    ("-5", "'-5'"),
])
def test_errors_name_the_bad_part(text: str, names: str) -> None:
    with pytest.raises(LinkSpecError) as info:
        LinkSpec.parse(text)
    assert names in str(info.value)


def test_errors_say_what_is_allowed() -> None:
    with pytest.raises(LinkSpecError, match="DOWN/UP"):
        LinkSpec.parse("20:fast")


def test_direct_cannot_shape() -> None:
    with pytest.raises(LinkSpecError, match="direct"):
        LinkSpec(10.0, 10.0, direct=True)


def test_parse_links_list_and_empty_entry() -> None:
    assert [s.to_text() for s in parse_links("30/10:20ms:0.1%,20:40ms,direct")] == [
        "30/10:20ms:0.1%", "20:40ms", "direct"]
    with pytest.raises(LinkSpecError, match="empty entry"):
        parse_links("20:40ms,,10")


def test_parse_links_toml(tmp_path: Path) -> None:
    path = tmp_path / "links.toml"
    path.write_text('links = ["20:40ms", {down_mbit = 5.0, up_mbit = 1.0, loss = 0.01}]\n')
    assert parse_links(str(path)) == [LinkSpec(20.0, 20.0, delay_ms=40.0),
                                      LinkSpec(5.0, 1.0, loss=0.01)]
    path.write_text('links = [{down_mbit = 5.0, speed = 1}]\n')
    with pytest.raises(LinkSpecError, match="speed"):
        parse_links(str(path))


def test_percent_and_ms_helpers() -> None:
    assert parse_percent("5%") == pytest.approx(0.05)
    assert parse_percent("0.2") == pytest.approx(0.2)
    assert parse_ms("30ms") == 30.0
    with pytest.raises(LinkSpecError, match="'lots'"):
        parse_percent("lots")
    with pytest.raises(LinkSpecError, match="'-1ms'"):
        parse_ms("-1ms")


rates = st.one_of(st.none(), st.integers(1, 10_000).map(float))
specs = st.builds(LinkSpec, down_mbit=rates, up_mbit=rates,
                  delay_ms=st.integers(0, 500).map(float),
                  jitter_ms=st.integers(0, 50).map(float),
                  loss=st.integers(0, 1000).map(lambda n: n / 1000),
                  queue_ms=st.integers(1, 500).map(float))


@given(specs)
def test_text_form_round_trips(spec: LinkSpec) -> None:
    assert LinkSpec.parse(spec.to_text()) == spec
    assert LinkSpec.from_dict(spec.to_dict()) == spec
