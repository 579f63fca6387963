"""Not collected by the suite (no ``test_`` prefix): ``test_suite_teardown`` runs it in a
child pytest, which builds a lab, says so, then hangs until it is stopped."""

from __future__ import annotations

import time

from tests.e2e.tunnel_util import LabFactory


def test_builds_a_lab_then_hangs(lab: LabFactory) -> None:
    built = lab(["10:5ms"])
    print("LAB-UP", built.prefix, flush=True)
    time.sleep(300)
