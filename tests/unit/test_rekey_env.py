"""The test-only rekey interval (``RATBOND_TEST_REKEY_AFTER``): the soak and the rekey tests
shorten it to see many rekeys in a short run; a bad value stops the start, named."""

from __future__ import annotations

import pytest

from ratbond.config import ConfigError
from ratbond.crypto import DEFAULT_LIMITS
from ratbond.runtime.common import REKEY_ENV, channel_limits


def test_unset_or_empty_keeps_the_defaults() -> None:
    assert channel_limits({}) is DEFAULT_LIMITS
    assert channel_limits({REKEY_ENV: ""}) is DEFAULT_LIMITS


def test_a_value_shortens_rekey_and_keeps_the_rest() -> None:
    limits = channel_limits({REKEY_ENV: "5"})
    assert limits.rekey_after_time == 5.0 and limits.reject_after_time == 65.0
    assert limits.key_grace == DEFAULT_LIMITS.key_grace
    assert limits.max_pending == DEFAULT_LIMITS.max_pending


@pytest.mark.parametrize("raw", ["0", "0.5", "121", "soon", "nan", "-3"])
def test_a_bad_value_is_refused_with_its_name_and_range(raw: str) -> None:
    with pytest.raises(ConfigError, match=rf"{REKEY_ENV}='{raw}'.*between 1 and 120"):
        channel_limits({REKEY_ENV: raw})
