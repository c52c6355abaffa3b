"""Native resolution enforced at extraction: tiles whose µm/px or px differ from a foundation
model's native ones by more than 10 % are refused (exit 2, a message naming both, nothing
written) unless --allow-resolution-mismatch, which resizes them and records it in the
features file's transform and fingerprint. ImageNet encoders have no native µm/px: no check."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from slides import synthetic_tissue, write_tiled_tiff
from test_extract import grid, write_coords_file
from test_extract_cli import cli

from pathfl.features import fm_loader
from pathfl.features.encoders import ENCODERS
from pathfl.features.foundation import FOUNDATION_MODELS
from pathfl.features.transform import resolution_mismatch
from pathfl.formats.features_h5 import read_features
from pathfl.io import sha256_file


def _spec(name: str):
    return ENCODERS.meta(name)["cfg"].spec


def _attrs(tile_px: int, mpp: float, *, read_px: int | None = None) -> dict:
    read_px = read_px or tile_px
    return {"tile_size": tile_px, "mpp_level0": mpp, "patch_size_level0": read_px}


def test_resolution_rule() -> None:
    uni = _spec("uni")
    assert resolution_mismatch(uni, _attrs(224, 0.5)) is None
    assert resolution_mismatch(uni, _attrs(224, 0.54)) is None  # within 10 %
    assert resolution_mismatch(uni, _attrs(240, 0.5)) is None
    # 448 level-0 px of a 0.25 µm/px slide resized to 224: 0.5 µm/px as fed
    assert resolution_mismatch(uni, _attrs(224, 0.25, read_px=448)) is None
    assert resolution_mismatch(uni, _attrs(224, 0.25)) == {
        "tile_mpp": 0.25, "tile_px": 224, "native_mpp": [0.5], "native_px": 224,
    }  # fmt: skip
    assert resolution_mismatch(uni, _attrs(256, 0.5))["tile_px"] == 256
    assert resolution_mismatch(uni, {"tile_size": 224})["tile_mpp"] is None  # unknown µm/px
    virchow2 = _spec("virchow2")  # mixed-magnification training: any of its four
    assert all(resolution_mismatch(virchow2, _attrs(224, m)) is None for m in (0.25, 1.0, 2.0))
    assert resolution_mismatch(virchow2, _attrs(224, 0.7)) is not None
    for name in ("mobilenet-v2", "resnet50-trunc", "kaiko-vits16", "uni2-h"):  # no native µm/px
        assert resolution_mismatch(_spec(name), _attrs(96, 3.0)) is None


@pytest.fixture()
def tiny_phikon(tmp_path, monkeypatch):
    """The registry's ``phikon`` entry with its architecture cut to 1 block (everything else
    as published), and a Hugging Face folder of random weights for it, saved by transformers."""
    from transformers import ViTConfig, ViTModel

    fm = dataclasses.replace(
        FOUNDATION_MODELS["phikon"],
        kwargs={**FOUNDATION_MODELS["phikon"].kwargs, "num_hidden_layers": 1},
    )
    cfg = ENCODERS.meta("phikon")["cfg"]
    monkeypatch.setitem(ENCODERS._entries, "phikon", fm_loader._factory(fm, cfg))
    torch.manual_seed(0)
    model = ViTModel(ViTConfig(**fm.kwargs), add_pooling_layer=True)
    folder = tmp_path / "phikon-weights"
    model.save_pretrained(folder)
    return folder


def _tiles(root, tile_px: int):
    slide = write_tiled_tiff(root / "s.tif", synthetic_tissue(512, 512, seed=3), mpp=0.5, levels=1)
    coords = grid(2, 1, tile_px)
    write_coords_file(root / "tiles" / "coords" / "s.h5", slide, coords, read_size=tile_px,
                      tile_size=tile_px)  # fmt: skip
    return root / "tiles"


def _extract(monkeypatch, capsys, tiles, out, weights, *extra: str) -> tuple[int, str]:
    return cli(monkeypatch, capsys, "extract", "--tiles", str(tiles), "--out", str(out),
               "--encoder", "phikon", "--weights", str(weights), "--workers", "0",
               "--threads", "1", *extra)  # fmt: skip


def test_mismatched_tiles_refused_then_allowed(tmp_path, monkeypatch, capsys, tiny_phikon) -> None:
    tiles = _tiles(tmp_path, 64)
    out = tmp_path / "out"
    rc, text = _extract(monkeypatch, capsys, tiles, out, tiny_phikon)
    assert rc == 2, text
    flat = " ".join(text.split())
    assert "encoder phikon was trained on 224-px tiles at 0.5 µm/px" in flat
    assert "s (64 px at 0.5 µm/px)" in flat and "--allow-resolution-mismatch" in flat
    assert "Traceback" not in text and not (out / "features" / "s.h5").exists()
    rc, text = _extract(monkeypatch, capsys, tiles, out, tiny_phikon, "--allow-resolution-mismatch")
    assert rc == 0, text
    feats, _, attrs = read_features(out / "features" / "s.h5")
    assert feats.shape == (2, 768)
    transform = (
        json.loads(attrs["transform"])
        if isinstance(attrs["transform"], str)
        else attrs["transform"]
    )
    assert transform["resize"] == 224
    assert transform["resolution_mismatch"] == {
        "tile_mpp": 0.5, "tile_px": 64, "native_mpp": [0.5], "native_px": 224,
    }  # fmt: skip
    assert attrs["weights_sha256"] == sha256_file(tiny_phikon / "model.safetensors")
    assert attrs["encoder_config_sha256"]


def test_native_tiles_extract_and_bad_weights_exit_2(
    tmp_path, monkeypatch, capsys, tiny_phikon
) -> None:
    tiles = _tiles(tmp_path, 224)
    out = tmp_path / "out"
    rc, text = _extract(monkeypatch, capsys, tiles, out, tiny_phikon)
    assert rc == 0, text
    feats, _, attrs = read_features(out / "features" / "s.h5")
    assert feats.shape == (2, 768) and "resolution_mismatch" not in str(attrs["transform"])
    rc, text = _extract(monkeypatch, capsys, tiles, out, tiny_phikon)
    assert rc == 0 and "skipped" in text  # same fingerprint: up to date
    # a file that does not fit: one message naming it and the keys, exit 2
    from safetensors.torch import load_file, save_file

    state = load_file(tiny_phikon / "model.safetensors")
    state["embeddings.cls_token"] = torch.zeros(1, 1, 5)
    save_file(state, tiny_phikon / "model.safetensors")
    rc, text = _extract(monkeypatch, capsys, tiles, tmp_path / "out2", tiny_phikon)
    flat = " ".join(text.split())
    assert rc == 2, text
    assert "model.safetensors: weights do not fit encoder 'phikon'" in flat
    assert "embeddings.cls_token file [1, 1, 5] vs model [1, 1, 768]" in flat
    assert "Traceback" not in text
