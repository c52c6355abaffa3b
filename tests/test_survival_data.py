"""Clinical table validation (every bad row reported with its ids), bags from real HDF5
features files, folds, covariate scaling, time bins."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pathfl.survival.data import (
    ClinicalError,
    load_bags,
    load_clinical,
    make_folds,
    survival_array,
)
from pathfl.survival.synthetic import write_features_h5
from pathfl.survival.train import fit_time_bins


def _csv(tmp_path: Path, text: str, name: str = "clinical.csv") -> Path:
    p = tmp_path / name
    p.write_text(text.strip() + "\n")
    return p


def _feats(d: Path, sid: str, n: int = 5, dim: int = 8, encoder: str = "enc") -> None:
    rng = np.random.default_rng(abs(hash(sid)) % 2**32)
    coords = np.stack([np.arange(n) * 224, np.zeros(n)], 1).astype(np.int64)
    write_features_h5(
        d / f"{sid}.h5",
        rng.normal(size=(n, dim)).astype(np.float32),
        coords,
        slide_id=sid,
        encoder=encoder,
    )


def test_bad_table_lists_every_bad_row(tmp_path: Path) -> None:
    p = _csv(
        tmp_path,
        """
patient_id,slide_id,time,event,age
A,a1,10,1,50
B,b1,,0,60
C,c1,-3,1,61
D,d1,5,2,62
E,a1,4,0,63
F,f1,abc,1,x
G,g1,7,1,40
G,g2,8,1,40
,h1,3,0,41
""",
    )
    with pytest.raises(ClinicalError) as ei:
        load_clinical(p)
    probs = ei.value.problems
    text = str(ei.value)
    assert "line 3 (patient_id=B, slide_id=b1): missing time" in text
    assert "line 4 (patient_id=C, slide_id=c1): time -3 must be > 0" in text
    assert "line 5 (patient_id=D, slide_id=d1): event '2' must be 0 (censored) or 1" in text
    assert "line 6 (patient_id=E, slide_id=a1): duplicate slide_id (also on line 2)" in text
    assert any(
        "slide_id=f1" in x and "'abc' is not a number" in x and "age='x'" in x for x in probs
    )
    assert any("patient_id=G" in x and "disagree on time" in x for x in probs)
    assert any("line 10" in x and "empty patient_id" in x for x in probs)
    assert len(probs) == 7  # nothing else flagged, nothing silently dropped


def test_missing_columns_and_empty(tmp_path: Path) -> None:
    with pytest.raises(ClinicalError, match=r"missing required column.*event"):
        load_clinical(_csv(tmp_path, "patient_id,slide_id,time\nA,a,1"))
    with pytest.raises(ClinicalError, match="no data rows"):
        load_clinical(_csv(tmp_path, "patient_id,slide_id,time,event", "e.csv"))
    with pytest.raises(FileNotFoundError):
        load_clinical(tmp_path / "nope.csv")


def test_bags_union_of_slides_and_missing_files(tmp_path: Path) -> None:
    fdir = tmp_path / "features"
    fdir.mkdir()
    for sid, n in (("a1", 3), ("a2", 4), ("b1", 5)):
        _feats(fdir, sid, n)
    p = _csv(
        tmp_path,
        """
patient_id,slide_id,time,event,site,age
A,a1,10,1,s1,50
A,a2,10,1,s1,50
B,b1,4.5,0,s2,70
""",
    )
    table = load_clinical(p)
    assert table.covariate_columns == ["age"]  # site is not a covariate
    bags = load_bags(fdir, table, covariates=["age"])
    a, b = bags
    assert (a.patient_id, a.n_tiles, a.slide_ids, a.event, a.time) == ("A", 7, ["a1", "a2"], 1, 10)
    assert a.tile_slide_index.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert a.coords.shape == (7, 2) and a.coords.dtype == np.int64
    assert b.covariates.tolist() == [70.0] and b.site == "s2"

    (fdir / "a2.h5").unlink()
    with pytest.raises(ClinicalError, match=r"line 3 \(patient_id=A, slide_id=a2\): no features"):
        load_bags(fdir, table)


def test_mixed_encoders_refused(tmp_path: Path) -> None:
    fdir = tmp_path / "f"
    fdir.mkdir()
    _feats(fdir, "a", dim=8, encoder="enc1")
    _feats(fdir, "b", dim=16, encoder="enc2")
    p = _csv(tmp_path, "patient_id,slide_id,time,event\nA,a,1,1\nB,b,2,0")
    with pytest.raises(ClinicalError, match="mix encoder values"):
        load_bags(fdir, load_clinical(p))


def test_folds_by_patient_stratified_seeded(tmp_path: Path) -> None:
    from pathfl.survival.data import PatientBag

    bags = [
        PatientBag(
            f"P{i}",
            np.zeros((2, 4), np.float32),
            1.0 + i,
            int(i % 3 == 0),
            None,
            [f"s{i}"],
            np.zeros(2, np.int64),
            np.zeros((2, 2), np.int64),
        )
        for i in range(30)
    ]
    folds = make_folds(bags, k=5, seed=1)
    val = np.concatenate([v for _, v in folds])
    assert sorted(val.tolist()) == list(range(30))
    for tr, va in folds:
        assert not set(tr) & set(va)
        assert sum(bags[i].event for i in va) == 2  # 10 events spread over 5 folds
    again = make_folds(bags, k=5, seed=1)
    assert all((a[1] == b[1]).all() for a, b in zip(folds, again, strict=True))
    assert any(
        (a[1] != b[1]).any() for a, b in zip(folds, make_folds(bags, k=5, seed=2), strict=True)
    )


def test_scaler_uses_training_statistics(tmp_path: Path) -> None:
    from pathfl.survival.data import PatientBag

    def bag(v: float) -> PatientBag:
        return PatientBag(
            "p",
            np.zeros((1, 2), np.float32),
            1.0,
            1,
            np.array([v], np.float32),
            ["s"],
            np.zeros(1, np.int64),
            np.zeros((1, 2), np.int64),
        )

    from pathfl.survival.scaling import BagScaler

    sc = BagScaler.fit([bag(1.0), bag(3.0)], ["age"], standardize_features=False)
    assert sc.covariates.mean == [2.0] and sc.covariates.std == [1.0]
    assert sc.apply([bag(5.0)])[0].covariates.tolist() == [3.0]
    assert BagScaler.from_dict(sc.to_dict()) == sc


def test_time_bins_from_uncensored_quantiles() -> None:
    times = np.array([1, 2, 3, 4, 5, 100, 200, 300], float)
    events = np.array([1, 1, 1, 1, 1, 0, 0, 0])
    cuts = fit_time_bins(times, events, n_bins=4)
    np.testing.assert_allclose(cuts, np.quantile([1, 2, 3, 4, 5], [0.25, 0.5, 0.75]))
    y = survival_array(events, times)
    assert y.dtype.names == ("event", "time") and y["event"].sum() == 5


def _set_attrs(path: Path, **attrs: object) -> None:
    import h5py

    with h5py.File(path, "r+") as f:
        f.attrs.update(attrs)


def test_table_and_features_problems_reported_in_one_pass(tmp_path: Path) -> None:
    """Negative time, event=2, a slide without a features file and a patient whose rows
    disagree: all four in one error, each naming its CSV line(s), in line order."""
    from pathfl.survival.data import load_cohort

    fdir = tmp_path / "features"
    fdir.mkdir()
    for sid in ("a1", "b1", "d1", "d2"):
        _feats(fdir, sid)
    p = _csv(
        tmp_path,
        """
patient_id,slide_id,time,event
A,a1,-4,1
B,b1,5,2
C,c1,6,0
D,d1,7,1
D,d2,9,1
""",
    )
    with pytest.raises(ClinicalError) as ei:
        load_cohort(fdir, p, covariates=[])
    probs = ei.value.problems
    assert probs == [
        "line 2 (patient_id=A, slide_id=a1): time -4 must be > 0",
        "line 3 (patient_id=B, slide_id=b1): event '2' must be 0 (censored) or 1 (event)",
        f"line 4 (patient_id=C, slide_id=c1): no features file {fdir / 'c1.h5'}",
        "lines 5, 6 (patient_id=D, slides d1, d2): rows disagree on time: "
        "7.0 on line 5, 9.0 on line 6",
    ]
    # a rejected row's features file is checked too, merged into that row's line
    (fdir / "b1.h5").unlink()
    with pytest.raises(ClinicalError) as ei:
        load_cohort(fdir, p, covariates=[])
    assert any(
        x.startswith("line 3 (patient_id=B, slide_id=b1): event '2'") and "no features file" in x
        for x in ei.value.problems
    )
    # load_clinical alone reports the table's problems only (2 rows + 1 patient)
    with pytest.raises(ClinicalError) as ei:
        load_clinical(p)
    assert len(ei.value.problems) == 3 and "features file" not in str(ei.value)


def test_cohort_mixing_tilings_refused_naming_slides(tmp_path: Path) -> None:
    """Features at 0.5 µm/px/224 px, 8 µm/px/16 px and 0.25 µm/px in one cohort: refused,
    each odd value with its slides and CSV lines; nothing is loaded."""
    fdir = tmp_path / "features"
    fdir.mkdir()
    sids = [f"s{i}" for i in range(6)]
    for sid in sids:
        _feats(fdir, sid)
    _set_attrs(fdir / "s4.h5", target_mpp=8.0, tile_size=16)
    _set_attrs(fdir / "s5.h5", target_mpp=0.25)
    rows = "\n".join(f"P{i},{sid},{i + 1},{i % 2}" for i, sid in enumerate(sids))
    table = load_clinical(_csv(tmp_path, "patient_id,slide_id,time,event\n" + rows))
    with pytest.raises(ClinicalError) as ei:
        load_bags(fdir, table)
    text = str(ei.value)
    assert "mix target_mpp values" in text and "mix tile_size values" in text
    assert "target_mpp=0.5 in 4 slide(s)" in text
    assert "target_mpp=8.0 in 1 slide(s): s4 (line 6)" in text
    assert "target_mpp=0.25 in 1 slide(s): s5 (line 7)" in text
    assert "tile_size=16 in 1 slide(s): s4 (line 6)" in text
    # mpp equal within the federation's tolerance, same everything else: accepted
    _set_attrs(fdir / "s4.h5", target_mpp=0.50001, tile_size=224)
    _set_attrs(fdir / "s5.h5", target_mpp=0.5)
    bags = load_bags(fdir, table)
    from pathfl.survival.data import bags_fingerprint

    fp = bags_fingerprint(bags)
    assert (fp["target_mpp"], fp["tile_size"], fp["encoder"], fp["feature_dim"]) == (
        0.5,
        224,
        "enc",
        8,
    )
    assert fp["weights_sha256"] == "none" and fp["dtype"] == "float32"
    # another weights hash or storage dtype is refused as well
    _set_attrs(fdir / "s1.h5", weights_sha256="abc")
    with pytest.raises(ClinicalError, match=r"mix weights_sha256 values.*s1 \(line 3\)"):
        load_bags(fdir, table)
