"""Waiting for a side effect in a test: poll the condition until a deadline (never a fixed sleep).

``wait_until(predicate, timeout, message, interval=0.05)`` calls ``predicate`` until it returns
something true and returns that; once ``timeout`` seconds have passed it fails the test with
``message`` (a string, or a callable giving one, e.g. the end of a log). ``wait_until_async`` is the
same for a test running an event loop (it yields to the loop between polls). ``tests/conftest.py``
offers both as fixtures.
"""

from __future__ import annotations

import asyncio
import time

import pytest


def _poll(predicate, timeout: float, message, interval: float):
    """Yields the seconds to sleep until the deadline; returns predicate()'s first true value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"{message() if callable(message) else message} (waited {timeout:g} s)")
        yield min(interval, max(deadline - time.monotonic(), 0.0))


def wait_until(predicate, timeout: float, message, interval: float = 0.05):
    polls = _poll(predicate, timeout, message, interval)
    try:
        while True:
            time.sleep(next(polls))
    except StopIteration as done:
        return done.value


async def wait_until_async(predicate, timeout: float, message, interval: float = 0.05):
    polls = _poll(predicate, timeout, message, interval)
    try:
        while True:
            await asyncio.sleep(next(polls))
    except StopIteration as done:
        return done.value
