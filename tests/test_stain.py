"""Stain normalisation and augmentation (pathfl.features.stain, stain_ref) against values
computed by hand on small images."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pathfl.config import ConfigError
from pathfl.features import stain
from pathfl.features.stain_ref import (
    AugmentSpec,
    fit_reference,
    load_reference,
    make_stain_transform,
    save_reference,
)


def _image(rng: np.random.Generator, h: int = 4, w: int = 4) -> torch.Tensor:
    """A (1, 3, h, w) uint8 pinkish image."""
    base = np.array([200, 120, 170])[:, None, None]
    img = base + rng.integers(-40, 40, size=(3, h, w))
    return torch.from_numpy(img.clip(0, 255).astype(np.uint8)).unsqueeze(0)


def test_lab_conversion_matches_hand_values_and_inverts() -> None:
    # white → L=100, a=b=0 (to 0.01, as scikit-image); black → 0;
    # pure red (sRGB 1,0,0) → L*a*b* (53.24, 80.09, 67.20)
    rgb = torch.tensor([[[1.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    lab = stain.rgb_to_lab(rgb)
    assert torch.allclose(lab[0, :, 0], torch.tensor([100.0, 0.0, 0.0]), atol=0.01)
    assert torch.allclose(lab[0, :, 1], torch.zeros(3), atol=1e-3)
    assert torch.allclose(lab[0, :, 2], torch.tensor([53.24, 80.09, 67.20]), atol=0.01)
    assert torch.allclose(stain.lab_to_rgb(lab), rgb, atol=1e-4)


def test_reinhard_output_has_the_reference_lab_mean_and_std() -> None:
    rng = np.random.default_rng(1)
    src, target = _image(rng), _image(rng) // 2 + 60
    ref_mean, ref_std = stain.reinhard_fit(target)
    # by hand: the target's L*a*b* per-channel mean and population std
    lab_t = stain.rgb_to_lab(target.reshape(1, 3, -1).float() / 255)[0]
    assert torch.allclose(ref_mean, lab_t.mean(-1), atol=1e-4)
    assert torch.allclose(
        ref_std, torch.sqrt(((lab_t - lab_t.mean(-1, keepdim=True)) ** 2).mean(-1))
    )
    lab = stain.reinhard_lab(src, ref_mean, ref_std)[0]
    assert torch.allclose(lab.mean(-1), ref_mean, atol=1e-3)
    assert torch.allclose(lab.std(-1, correction=0), ref_std, atol=1e-3)
    # after the round trip to 8-bit RGB they still agree to within the 8-bit rounding
    out = stain.reinhard_normalise(src, ref_mean, ref_std)
    assert out.dtype == torch.uint8 and out.shape == src.shape
    lab_out = stain.rgb_to_lab(out.reshape(1, 3, -1).float() / 255)[0]
    assert torch.allclose(lab_out.mean(-1), ref_mean, atol=0.5)
    assert torch.allclose(lab_out.std(-1, correction=0), ref_std, atol=0.5)
    assert not torch.equal(out, src)


def _stain_image(he: np.ndarray, n: int = 16, io: float = stain.MACENKO_IO) -> torch.Tensor:
    """A (1, 3, n, n) image made with the stain matrix ``he`` (3, 2): a third of the pixels
    pure hematoxylin, a third pure eosin, a third mixtures, concentrations 2.2..3 (so that
    every channel's OD passes Macenko's 0.15 threshold, even the red of pure eosin)."""
    rng = np.random.default_rng(0)
    m = n * n
    c = rng.uniform(2.2, 3.0, size=(2, m))
    c[1, : m // 3] = 0
    c[0, m // 3 : 2 * m // 3] = 0
    rgb = io * np.exp(-he @ c) - 1
    return torch.from_numpy(rgb.reshape(1, 3, n, n)).float()


def test_macenko_recovers_a_known_stain_matrix() -> None:
    he = np.array([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]])
    he /= np.linalg.norm(he, axis=0)
    img = _stain_image(he)
    od = stain.optical_density(img.reshape(1, 3, -1))
    found, ok = stain.macenko_stains(od)
    assert bool(ok[0])
    got = found[0].numpy()
    # up to order and sign: each true vector is (±) one of the found ones
    for j in range(2):
        best = max(abs(float(he[:, j] @ got[:, i])) for i in range(2))
        assert best > 0.999, (j, got)
    # hematoxylin first (the larger red OD)
    assert abs(float(he[:, 0] @ got[:, 0])) > 0.999


def test_macenko_normalising_to_an_images_own_reference_keeps_it() -> None:
    he = np.array([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]])
    he /= np.linalg.norm(he, axis=0)
    img = _stain_image(he).round().clamp(0, 255).to(torch.uint8)
    ref_he, ref_max = stain.macenko_fit(img)
    out = stain.macenko_normalise(img, ref_he, ref_max)
    assert int((out.int() - img.int()).abs().max()) <= 2
    # a reference with half the eosin changes it; the output's concentrations (least squares
    # on the reference matrix) have the reference's 99th percentiles
    target = ref_max * torch.tensor([1.0, 0.5])
    out2 = stain.macenko_normalise(img, ref_he, target)
    assert int((out2.int() - img.int()).abs().max()) > 20
    conc = stain.concentrations(stain.optical_density(out2.reshape(1, 3, -1).float()), ref_he)
    got = stain.quantile_nearest(conc[0], 0.99)
    assert torch.allclose(got, target, rtol=0.03), (got, target)


def test_macenko_leaves_a_tile_without_tissue_unchanged() -> None:
    blank = torch.full((2, 3, 8, 8), 250, dtype=torch.uint8)
    he = torch.tensor([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]])
    out = stain.macenko_normalise(blank, he, torch.tensor([1.9, 1.0]))
    assert torch.equal(out, blank)


def test_hed_jitter_zero_is_identity_and_seeded_is_deterministic() -> None:
    x = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(stain.hed_jitter(x, sigma=0.0, bias=0.0), x)

    def run(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return stain.hed_jitter(x, sigma=0.1, bias=0.05, generator=gen)

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))
    assert not torch.equal(run(3), x)


def test_hed_jitter_scales_the_hematoxylin_channel_by_hand() -> None:
    # a pixel of pure hematoxylin (unit OD vector h, concentration 1) jittered with the
    # generator's draws: its OD is h * (1 + sigma (2 u1 - 1)) + bias (2 u2 - 1) * h (only H)
    m = torch.tensor(stain._RGB_FROM_HED)
    h = m[0] / m[0].norm()
    pixel = (256 * torch.exp(-h) - 1).view(1, 3, 1, 1)
    x = pixel.round().to(torch.uint8)
    gen = torch.Generator().manual_seed(7)
    out = stain.hed_jitter(x, sigma=0.2, bias=0.0, generator=gen)
    u1 = torch.rand((1, 3, 1), generator=torch.Generator().manual_seed(7))
    od_in = -torch.log((x.float().view(3) + 1) / 256)
    conc = torch.linalg.inv(m / m.norm(dim=1, keepdim=True)).T @ od_in
    expect = (
        256
        * torch.exp(
            -((m / m.norm(dim=1, keepdim=True)).T @ (conc * (1 + 0.2 * (2 * u1[0, :, 0] - 1))))
        )
        - 1
    )
    assert torch.allclose(out.view(3).float(), expect.round().clamp(0, 255), atol=1)


def test_reference_round_trip_hash_and_errors(tmp_path) -> None:
    rng = np.random.default_rng(2)
    tiles = torch.cat([_image(rng, 8, 8) for _ in range(3)])
    ref = fit_reference(tiles, "reinhard", fitted_on={"slides": ["s1"]})
    path = save_reference(ref, tmp_path / "ref.json")
    back = load_reference(path)
    assert back.sha256 == ref.sha256 and back.method == "reinhard"
    data = json.loads(path.read_text())
    assert data["sha256"] == ref.sha256 and len(data["lab_mean"]) == 3
    # re-indenting keeps the hash; editing a number is refused
    path.write_text(json.dumps(data))
    assert load_reference(path).sha256 == ref.sha256
    data["lab_mean"][0] += 1.0
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="edited"):
        load_reference(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"ref\.json"):
        load_reference(path)
    with pytest.raises(ConfigError, match="needs --stain-ref"):
        make_stain_transform(norm="macenko", ref_path=None, augment=AugmentSpec(),
                             device=torch.device("cpu"))  # fmt: skip
    save_reference(ref, path)
    with pytest.raises(ConfigError, match="reinhard reference"):
        make_stain_transform(norm="macenko", ref_path=path, augment=AugmentSpec(),
                             device=torch.device("cpu"))  # fmt: skip


def test_stain_transform_record_and_seeded_copies(tmp_path) -> None:
    rng = np.random.default_rng(3)
    tiles = torch.cat([_image(rng, 8, 8) for _ in range(2)])
    path = save_reference(fit_reference(tiles, "reinhard", fitted_on={}), tmp_path / "r.json")
    cpu = torch.device("cpu")
    none = make_stain_transform(norm="none", ref_path=None, augment=AugmentSpec(), device=cpu)
    assert none.record() == {} and not none.active
    assert torch.equal(none.normalise(tiles), tiles)
    t = make_stain_transform(norm="reinhard", ref_path=path, augment=AugmentSpec(k=2), device=cpu)
    rec = t.record()
    assert rec["stain_norm"]["ref_sha256"] == load_reference(path).sha256
    assert rec["stain_augment"]["k"] == 2
    a = t.augmented(tiles, key="s1", first_row=0)
    b = t.augmented(tiles, key="s1", first_row=0)
    c = t.augmented(tiles, key="s1", first_row=64)
    assert len(a) == 2 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[0], c[0])
    assert math.isfinite(float(a[0].float().mean()))
