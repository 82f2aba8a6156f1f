"""The real Open Bandit sample in the training data folder (``RECPILOT_TRAIN_OBD_DIR``, by default
``../shared/data/obd`` beside the checkout): a download read from outside the checkout, so not a
unit test; skipped where it is absent."""

from __future__ import annotations

import numpy as np
import pytest

from recpilot.models import data as D


@pytest.mark.skipif(not (D.TrainSettings().obd_dir / "random" / "all.csv").exists(), reason="OBD sample not present")
def test_real_obd_sample_loads():
    ds = D.load_obd(D.TrainSettings().obd_dir)
    assert len(ds) == 20_000 and ds.positives == 80
    train, test = ds.split_time(0.2)
    assert train.ts_ms.max() <= test.ts_ms.min()


@pytest.mark.skipif(not (D.TrainSettings().obd_dir / "random" / "all.csv").exists(), reason="OBD sample not present")
def test_obd_loads_the_same_in_chunks_of_any_size():
    # the full dataset (26M rows) is read in chunks; the chunk size must not change a single value
    whole = D.load_obd(D.TrainSettings().obd_dir)
    chunked = D.load_obd(D.TrainSettings().obd_dir, chunk_rows=777)
    for name in ("dense", "ids", "labels", "ts_ms", "groups", "items"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name), err_msg=name)
