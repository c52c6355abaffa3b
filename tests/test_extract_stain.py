"""`pathfl stain-ref fit` and `pathfl extract --stain-norm/--stain-augment` on real
(synthetic tifffile) slides: the reference file, the features and attrs, the fingerprint,
re-runs, and the augmented copies in ``features_aug``."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from test_extract import make_cohort, run
from test_extract_cli import cli

from pathfl.features.stain_ref import load_reference
from pathfl.formats.features_h5 import read_augmented, read_features
from pathfl.survival.fingerprint import fingerprint_from_attrs


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow  # five extraction runs (~10 s on an idle 2-core box, ~50 s under load)
def test_fit_reference_then_extract_normalised_and_augmented(tmp_path, monkeypatch, capsys):
    tiles = make_cohort(tmp_path, n_slides=2, n_side=2)
    ref_path = tmp_path / "ref.json"
    rc, out = cli(monkeypatch, capsys, "stain-ref", "fit", "--tiles", str(tiles),
                  "--out", str(ref_path), "--slide", "slide0", "--n-tiles", "3")  # fmt: skip
    assert rc == 0, out
    ref = load_reference(ref_path)
    data = json.loads(ref_path.read_text())
    assert ref.method == "macenko" and np.array(data["stain_matrix"]).shape == (3, 2)
    assert data["fitted_on"]["slides"] == ["slide0"] and data["fitted_on"]["n_tiles"] == 3
    assert ref.sha256[:12] in out
    # a slide that is not there, and a usage error, are one clear line each (exit 2)
    rc, out = cli(monkeypatch, capsys, "stain-ref", "fit", "--tiles", str(tiles),
                  "--out", str(ref_path), "--slide", "nope")  # fmt: skip
    assert rc == 2 and "--slide nope" in out and "Traceback" not in out

    plain, normed = tmp_path / "plain", tmp_path / "normed"
    assert run(tiles, plain) == {"slide0": "ok", "slide1": "ok"}
    kw = {"stain_norm": "macenko", "stain_ref": ref_path, "stain_augment": 2}
    assert run(tiles, normed, **kw) == {"slide0": "ok", "slide1": "ok"}
    for sid in ("slide0", "slide1"):
        f0, c0, a0 = read_features(plain / "features" / f"{sid}.h5")
        f1, c1, a1 = read_features(normed / "features" / f"{sid}.h5")
        assert np.array_equal(c0, c1) and f0.shape == f1.shape
        assert not np.allclose(f0, f1)  # the tiles were changed before the encoder
        assert a1["stain_norm"] == "macenko" and a1["stain_ref_sha256"] == ref.sha256
        assert a1["stain_augment_k"] == 2 and a0["stain_norm"] == "none"
        assert json.loads(a1["transform"])["stain_norm"]["ref_sha256"] == ref.sha256
        assert a0["fingerprint"] != a1["fingerprint"]
        fp = fingerprint_from_attrs(a1)
        assert fp["stain_norm"] == "macenko" and fp["stain_ref_sha256"] == ref.sha256
        aug = read_augmented(normed / "features" / f"{sid}.h5")
        assert aug is not None and aug.shape == (f1.shape[0], 2, f1.shape[1])
        assert not np.allclose(aug[:, 0], f1) and not np.allclose(aug[:, 0], aug[:, 1])
        assert read_augmented(plain / "features" / f"{sid}.h5") is None
        with h5py.File(normed / "features" / f"{sid}.h5", "r") as h:  # what CLAM reads
            assert np.array_equal(h["features"][:], f1) and h["coords"].shape == (len(c1), 2)
    # same options: skipped; other options on the same folder: refused without --overwrite
    assert run(tiles, normed, **kw) == {"slide0": "skipped", "slide1": "skipped"}
    assert run(tiles, normed) == {"slide0": "failed", "slide1": "failed"}
    # re-computed: the jitter is seeded, so the augmented copies come out the same
    before = read_augmented(normed / "features" / "slide0.h5")
    (normed / "features" / "slide0.h5").unlink()
    assert run(tiles, normed, **kw)["slide0"] == "ok"
    np.testing.assert_array_equal(read_augmented(normed / "features" / "slide0.h5"), before)


def test_bad_stain_options_are_usage_errors(tmp_path, monkeypatch, capsys) -> None:
    tiles = make_cohort(tmp_path, n_slides=1, n_side=1)
    o = str(tmp_path / "o")
    rc, out = cli(monkeypatch, capsys, "extract", "--tiles", str(tiles), "--out", o,
                  "--workers", "0", "--stain-norm", "macenko")  # fmt: skip
    assert rc == 2 and "needs --stain-ref" in out
    bad = tmp_path / "bad.json"
    bad.write_text('{"method": "macenko", "stain_matrix": [1, 2]}')
    rc, out = cli(monkeypatch, capsys, "extract", "--tiles", str(tiles), "--out", o,
                  "--workers", "0", "--stain-norm", "macenko", "--stain-ref", str(bad))  # fmt: skip
    assert rc == 2 and "bad.json" in out and "stain_matrix" in out
    rc, out = cli(monkeypatch, capsys, "extract", "--tiles", str(tiles), "--out", o,
                  "--workers", "0", "--stain-norm", "vahadane")  # fmt: skip
    assert rc == 2 and "--stain-norm" in out
