"""The poll-with-a-deadline helper every test waits with (tests/support/wait.py)."""

import pytest

from tests.support.wait import wait_until


def test_wait_until_returns_the_first_true_value_and_fails_naming_what_it_waited_for():
    calls = []
    assert wait_until(lambda: (calls.append(1) or len(calls) >= 3) and "done", 5, "three calls", 0.01) == "done"
    assert len(calls) == 3
    with pytest.raises(pytest.fail.Exception, match=r"never: the detail \(waited 0.05 s\)"):
        wait_until(lambda: False, 0.05, lambda: "never: the detail", 0.01)
