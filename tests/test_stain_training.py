"""Training-time augmentation from ``features_aug`` (issue 14): real HDF5 features files with
K augmented copies per tile; training draws among the K + 1 versions (repeatably under the
seed), evaluation and prediction never see a copy, the scaler is fitted on the originals, and
a federated site's bags carry the copies through the same code path."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pathfl.formats.features_h5 import FeaturesWriter
from pathfl.survival.augment import sample_tiles, training_bags
from pathfl.survival.config import TrainConfig
from pathfl.survival.data import ClinicalError, load_bags, load_clinical
from pathfl.survival.scaling import BagScaler
from pathfl.survival.synthetic import level0_attrs
from pathfl.survival.train import build_model, evaluate, predict, train_local

K = 2
DIM = 6
OFFSET = 1000.0  # copy j of a tile = the tile + (j + 1) * OFFSET: a row's version is readable


def _write(path: Path, feats: np.ndarray, aug: np.ndarray | None) -> None:
    n = len(feats)
    coords = np.stack([np.arange(n) * 224, np.zeros(n)], 1).astype(np.int64)
    attrs = {
        **level0_attrs(name=path.stem, tile_px=224, mpp=0.5),
        "encoder": "enc",
        "weights_sha256": "none",
        "feature_dim": DIM,
        "fingerprint": "fp-1",
    }
    with FeaturesWriter(path, feature_dim=DIM, n_max=n, n_aug=0 if aug is None else K) as w:
        w.append(feats, coords, aug)
        w.commit(attrs)


def _cohort(root: Path, *, n_patients: int = 12, aug: bool = True) -> tuple[Path, Path]:
    """``n_patients`` patients, the first with 2 slides; tiles in (-1, 1), copies offset."""
    rng = np.random.default_rng(7)
    feats_dir = root / "features"
    feats_dir.mkdir(parents=True)
    lines = ["patient_id,slide_id,time,event"]
    for i in range(n_patients):
        for s in range(2 if i == 0 else 1):
            sid = f"p{i}s{s}"
            f = rng.uniform(-1, 1, size=(int(rng.integers(5, 30)), DIM)).astype(np.float32)
            copies = np.stack([f + (j + 1) * OFFSET for j in range(K)], axis=1) if aug else None
            _write(feats_dir / f"{sid}.h5", f, copies)
            lines.append(f"P{i},{sid},{10 + 3 * i},{i % 2}")
    csv = root / "clinical.csv"
    csv.write_text("\n".join(lines) + "\n")
    return feats_dir, csv


def _versions(x: np.ndarray) -> np.ndarray:
    return np.rint(np.asarray(x, np.float64).mean(axis=1) / OFFSET).astype(int)


@pytest.fixture()
def bags(tmp_path: Path) -> list:
    feats_dir, csv = _cohort(tmp_path)
    return load_bags(feats_dir, load_clinical(csv))


def test_bags_carry_the_copies_of_every_slide(bags: list, tmp_path: Path) -> None:
    b0 = bags[0]
    assert b0.slide_ids == ["p0s0", "p0s1"]
    assert b0.features_aug is not None and b0.features_aug.shape == (b0.n_tiles, K, DIM)
    for j in range(K):
        np.testing.assert_allclose(b0.features_aug[:, j], b0.features + (j + 1) * OFFSET)
    feats_dir = tmp_path / "features"
    plain = load_bags(feats_dir, load_clinical(tmp_path / "clinical.csv"), augmented=False)
    assert all(b.features_aug is None for b in plain)  # evaluation-only callers: no copies
    np.testing.assert_array_equal(plain[0].features, b0.features)


def test_sampling_draws_every_version_and_repeats_under_the_seed(bags: list) -> None:
    b = bags[0]
    a = sample_tiles(b, np.random.default_rng(3), max_tiles=None)
    again = sample_tiles(b, np.random.default_rng(3), max_tiles=None)
    np.testing.assert_array_equal(a, again)
    v = _versions(a)
    assert set(v.tolist()) == {0, 1, 2}  # original and both copies, per tile
    for i, vi in enumerate(v):  # row i is a version of tile i, not another tile's
        ref = b.features[i] if vi == 0 else b.features_aug[i, vi - 1]
        np.testing.assert_array_equal(a[i], ref)
    sub = sample_tiles(b, np.random.default_rng(3), max_tiles=4)
    assert sub.shape == (4, DIM)
    # the bag itself is untouched; bags without copies sample exactly as before
    assert set(_versions(b.features).tolist()) == {0}
    no_aug = training_bags([b], enabled=False)[0]
    assert no_aug.features_aug is None and b.features_aug is not None
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    old = no_aug.features[np.sort(r1.choice(no_aug.n_tiles, size=4, replace=False))]
    np.testing.assert_array_equal(sample_tiles(no_aug, r2, max_tiles=4), old)


def _recorded_training(
    bags: list, cfg: TrainConfig
) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, torch.Tensor]]:
    """Train a fresh model on ``bags``, then predict and evaluate them: the model inputs of
    each phase (training, evaluation) and the trained weights."""
    model = build_model(cfg, feature_dim=DIM)
    seen: list[np.ndarray] = []
    inner = model.forward_batch

    def spy(x: torch.Tensor, *rest: object) -> torch.Tensor:
        seen.append(x.detach().numpy().copy())
        return inner(x, *rest)

    model.forward_batch = spy  # type: ignore[method-assign]
    train_local(model, bags, cfg, epochs=2, time_bins=None)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    n_train = len(seen)
    predict(model, bags, cfg, time_bins=None)
    evaluate(model, bags, cfg, time_bins=None)
    return seen[:n_train], seen[n_train:], state


def test_training_sees_copies_evaluation_never(bags: list) -> None:
    cfg = TrainConfig(model="abmil", min_steps=6, bags_per_batch=4, max_tiles=8, seed=1)
    train_x, eval_x, state = _recorded_training(bags, cfg)
    v_train = _versions(np.concatenate(train_x))
    assert {1, 2} <= set(v_train.tolist()) and 0 in v_train
    v_eval = _versions(np.concatenate(eval_x))
    assert set(v_eval.tolist()) == {0}  # predict and evaluate: originals, every tile
    assert sum(len(x) for x in eval_x) == 2 * sum(b.n_tiles for b in bags)
    # repeatable under the seed
    train_x2, _, state2 = _recorded_training(bags, cfg)
    for a, b in zip(train_x, train_x2, strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(torch.equal(state[k], state2[k]) for k in state)
    # switched off: only originals, and the same run as bags without copies
    off = TrainConfig(**{**cfg.to_dict(), "feature_augmentation": False})
    train_off, _, state_off = _recorded_training(bags, off)
    assert set(_versions(np.concatenate(train_off)).tolist()) == {0}
    _, _, state_plain = _recorded_training(training_bags(bags, enabled=False), cfg)
    assert all(torch.equal(state_off[k], state_plain[k]) for k in state_off)
    assert not all(torch.equal(state[k], state_off[k]) for k in state)


def test_scaler_fitted_on_originals_applied_to_copies(bags: list) -> None:
    with_aug = BagScaler.fit(bags, [])
    without = BagScaler.fit(training_bags(bags, enabled=False), [])
    assert with_aug.features.mean == without.features.mean
    assert with_aug.features.std == without.features.std
    scaled = with_aug.apply(bags)
    for b, s in zip(bags, scaled, strict=True):
        np.testing.assert_allclose(s.features_aug, with_aug.features.transform(b.features_aug))
        np.testing.assert_allclose(s.features, with_aug.features.transform(b.features))


def test_mismatched_features_aug_is_a_problem_naming_the_file(tmp_path: Path) -> None:
    feats_dir, csv = _cohort(tmp_path, n_patients=4)
    bad = feats_dir / "p2s0.h5"
    with h5py.File(bad, "a") as f:
        del f["features_aug"]
        f.create_dataset("features_aug", data=np.zeros((3, K, DIM), np.float32))
    with pytest.raises(ClinicalError) as ei:
        load_bags(feats_dir, load_clinical(csv))
    assert "p2s0.h5" in str(ei.value) and "features_aug (3, 2, 6) does not fit" in str(ei.value)
    assert load_bags(feats_dir, load_clinical(csv), augmented=False)  # evaluation still reads


def test_slides_without_copies_leave_the_patient_unaugmented(tmp_path: Path) -> None:
    feats_dir, csv = _cohort(tmp_path, n_patients=3)
    f = np.zeros((4, DIM), np.float32)
    _write(feats_dir / "p0s1.h5", f, None)  # patient P0's second slide has no copies
    bags = load_bags(feats_dir, load_clinical(csv))
    assert bags[0].features_aug is None and bags[1].features_aug is not None


def test_federated_site_bags_carry_the_copies(tmp_path: Path) -> None:
    from pathfl.fl.site import load_site

    feats_dir, csv = _cohort(tmp_path)
    node = {"site": "a", "features": str(feats_dir), "clinical": str(csv)}
    data = load_site(node, {"val_folds": 3, "seed": 0, "train": {}})
    assert all(b.features_aug is not None for b in data.train + data.val)
    scaler = BagScaler.fit(data.train, [])
    train, _ = data.scaled({"scaler": scaler.to_dict()})
    np.testing.assert_allclose(
        train[0].features_aug, scaler.features.transform(data.train[0].features_aug)
    )


def test_dp_training_draws_copies_only_when_enabled(bags: list) -> None:
    from pathfl.fl.trust.privacy import DPConfig, dp_train_local

    dp = DPConfig(enabled=True, noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-3)
    seen = {}
    for enabled in (True, False):
        cfg = TrainConfig(
            model="abmil", loss="nll", n_bins=2, bags_per_batch=6, seed=2,
            feature_augmentation=enabled,
        )  # fmt: skip
        model = build_model(cfg, feature_dim=DIM)
        xs: list[np.ndarray] = []
        inner = model.forward

        def spy(x: torch.Tensor, *rest: object, inner=inner, xs=xs) -> object:
            xs.append(x.detach().numpy().copy())
            return inner(x, *rest)

        model.forward = spy  # type: ignore[method-assign]
        dp_train_local(model, bags, cfg, dp, epochs=2, time_bins=np.array([20.0]))
        seen[enabled] = set(_versions(np.concatenate(xs)).tolist())
    assert {1, 2} <= seen[True] and seen[False] == {0}
