"""time_fraction_split against a per-user loop (the plain reference) on random inputs."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from silverrec.data import time_fraction_split, time_ordered_split


def _reference(user, ts, valid_fraction, test_fraction, min_train):
    train, valid, test = [], [], []
    for u in np.unique(user):
        rows = [i for i in range(user.size) if user[i] == u]
        rows.sort(key=lambda i: (ts[i], i))
        n = len(rows)
        n_test = 0 if test_fraction == 0 else max(1, int(np.floor(test_fraction * n + 0.5)))
        n_valid = 0 if valid_fraction == 0 else max(1, int(np.floor(valid_fraction * n + 0.5)))
        if n - n_test - n_valid < max(min_train, 1):
            n_test = n_valid = 0
        test += rows[n - n_test:]
        valid += rows[n - n_test - n_valid:n - n_test]
        train += rows[:n - n_test - n_valid]
    return sorted(train), sorted(valid), sorted(test)


@settings(deadline=None, max_examples=60, derandomize=True)
@given(m=st.integers(0, 80), users=st.integers(1, 6), seed=st.integers(0, 10_000),
       valid_fraction=st.sampled_from([0.0, 0.1, 0.25]), test_fraction=st.sampled_from([0.0, 0.1, 0.2]),
       min_train=st.integers(0, 3))
def test_matches_reference(m, users, seed, valid_fraction, test_fraction, min_train):
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, m)
    ts = rng.integers(0, 20, m)  # many ties in time: input order breaks them
    s = time_fraction_split(user, ts, valid_fraction, test_fraction, min_train)
    ref = _reference(user, ts, valid_fraction, test_fraction, min_train)
    assert (s.train.tolist(), s.valid.tolist(), s.test.tolist()) == ref


def test_one_per_user_matches_time_ordered_split_for_small_histories():
    user = np.repeat(np.arange(4), [1, 3, 5, 6])
    ts = np.arange(user.size)[::-1].copy()
    a = time_fraction_split(user, ts, 0.1, 0.1)
    b = time_ordered_split(user, ts)
    for name in ("train", "valid", "test"):
        np.testing.assert_array_equal(a.get(name), b.get(name))


def test_rejects_bad_fractions():
    z = np.zeros(3, dtype=np.int64)
    with pytest.raises(ValueError, match="test_fraction must be in"):
        time_fraction_split(z, z, 0.1, 1.5)
    with pytest.raises(ValueError, match="valid_fraction \\+ test_fraction must be < 1"):
        time_fraction_split(z, z, 0.5, 0.5)
    with pytest.raises(ValueError, match="equal length"):
        time_fraction_split(z, z[:2])
