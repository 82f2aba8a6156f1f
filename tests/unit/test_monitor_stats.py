"""Properties of the drift statistics (services.monitor.stats)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.monitor import stats

counts = st.lists(st.integers(min_value=0, max_value=10_000), min_size=2, max_size=30).filter(lambda c: sum(c) > 0)


@given(counts)
def test_identical_histograms_give_zero(c):
    assert stats.psi(c, c) == pytest.approx(0.0, abs=1e-12)
    assert stats.js_distance(c, c) == pytest.approx(0.0, abs=1e-6)
    bounds = list(range(1, len(c) + 1))
    assert stats.wasserstein_binned(bounds, c, c) == pytest.approx(0.0, abs=1e-12)


@given(st.data())
def test_psi_and_js_are_symmetric_non_negative_and_bounded(data):
    a = data.draw(counts)
    b = data.draw(st.lists(st.integers(0, 10_000), min_size=len(a), max_size=len(a)).filter(lambda c: sum(c) > 0))
    assert stats.psi(a, b) >= 0
    assert stats.psi(a, b) == pytest.approx(stats.psi(b, a), rel=1e-9, abs=1e-12)
    js = stats.js_distance(a, b)
    assert 0.0 <= js <= 1.0 + 1e-9
    assert js == pytest.approx(stats.js_distance(b, a), abs=1e-9)


@given(st.lists(st.integers(0, 1000), min_size=3, max_size=12).filter(lambda c: sum(c) > 0),
       st.integers(1, 5), st.floats(0.1, 10.0))
@settings(max_examples=60)
def test_wasserstein_of_a_shifted_histogram_is_the_shift(c, k, width):
    # equal-width buckets; the same counts moved k buckets up = every value moved by k * width
    n = len(c) + k
    bounds = [width * (i + 1) for i in range(n)]
    ref = list(c) + [0] * k
    cur = [0] * k + list(c)
    assert stats.wasserstein_binned(bounds, ref, cur) == pytest.approx(k * width, rel=1e-9)


def test_a_half_sigma_shift_of_a_normal_reads_about_half_a_sigma_and_a_psi_near_a_quarter():
    rng = np.random.default_rng(0)
    bounds = np.linspace(-4, 4, 41)[1:]
    ref = np.bincount(np.searchsorted(bounds, rng.normal(0, 1, 200_000)), minlength=41)
    cur = np.bincount(np.searchsorted(bounds, rng.normal(0.5, 1, 200_000)), minlength=41)
    assert stats.wasserstein_binned(bounds, ref, cur, lower=-4.0) == pytest.approx(0.5, abs=0.02)
    assert stats.psi(ref, cur) == pytest.approx(0.25, abs=0.03)


def test_align_pads_the_reference_overflow_and_refuses_other_bounds():
    r, c = stats.align([1, 2, 3], [1, 2, 3, 4])
    assert list(r) == [1, 2, 3, 0] and list(c) == [1, 2, 3, 4]
    with pytest.raises(ValueError):
        stats.align([1, 2], [1, 2, 3, 4, 5])


def test_categorical_counts_over_the_union_of_categories():
    keys, r, c = stats.categorical({"a": 3, "b": 1}, {"b": 2, "c": 5})
    assert keys == ["a", "b", "c"] and list(r) == [3, 1, 0] and list(c) == [0, 2, 5]
    assert stats.js_distance(r, c) > 0.5
