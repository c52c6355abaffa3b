"""Encoder registry: the default encoder really carries the pretrained ImageNet weights,
resnet50-trunc loads torchvision-format state dicts, and missing weights fail clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from typer.testing import CliRunner

from pathfl.config import ConfigError
from pathfl.features import weights as wts
from pathfl.features.encoders import (
    create_encoder,
    list_encoders,
    mobilenet_v2_imagenet,
)
from pathfl.features.inference import InferenceRunner
from pathfl.io import sha256_file
from pathfl.registry import UnknownNameError

CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One encoder thread: on a shared 2-core CI box OpenMP spin-waits make 2 threads ~10x
    slower than 1; results are identical."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _chelsea_224() -> torch.Tensor:
    from skimage import data

    img = Image.fromarray(data.chelsea())  # 451 x 300 RGB
    w, h = img.size
    scale = 256 / min(w, h)
    img = img.resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR)
    w, h = img.size
    left, top = (w - 224) // 2, (h - 224) // 2
    img = img.crop((left, top, left + 224, top + 224))
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).unsqueeze(0)


@pytest.fixture(scope="module")
def mobilenet():
    return create_encoder("mobilenet-v2")


def test_mobilenet_v2_features_are_pretrained_imagenet(mobilenet) -> None:
    """The encoder's 1280-d features, fed to the packaged classifier head, say "cat"."""
    feats = InferenceRunner(mobilenet)(_chelsea_224())
    assert feats.shape == (1, 1280)
    full = mobilenet_v2_imagenet()
    with torch.inference_mode():
        logits = full.classifier(feats)
    top = int(logits.argmax(1))
    assert top in CAT_CLASSES, f"chelsea classified as ImageNet class {top}, not a cat"
    assert mobilenet.weights_sha256 == sha256_file(mobilenet.weights_path)
    assert mobilenet.weights_path.name == wts.MOBILENET_FILE


def test_resnet50_trunc_loads_torchvision_state_dict(tmp_path) -> None:
    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    enc = create_encoder("resnet50-trunc", weights=path)
    assert enc.spec.feature_dim == 1024
    assert enc.weights_sha256 == sha256_file(path)
    out = InferenceRunner(enc)(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    assert out.shape == (2, 1024)
    assert torch.isfinite(out).all()


def test_resnet50_trunc_from_hub_cache(tmp_path, monkeypatch) -> None:
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(torchvision.models.resnet50().state_dict(), ckpt / wts.RESNET50_FILES[0])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    row = {r["name"]: r for r in list_encoders()}["resnet50-trunc"]
    assert row["available"] and row["weights"] == str(ckpt / wts.RESNET50_FILES[0])
    enc = create_encoder("resnet50-trunc")
    assert enc.weights_path == ckpt / wts.RESNET50_FILES[0]


def test_resnet50_trunc_missing_weights_says_where(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    assert not {r["name"]: r for r in list_encoders()}["resnet50-trunc"]["available"]
    with pytest.raises(wts.WeightsError) as e:
        create_encoder("resnet50-trunc")
    msg = str(e.value)
    assert "--weights" in msg and str(tmp_path / "empty" / "hub" / "checkpoints") in msg
    assert isinstance(e.value, ConfigError)  # CLI exit code 2
    with pytest.raises(wts.WeightsError, match="not found"):
        create_encoder("resnet50-trunc", weights=tmp_path / "nope.pth")


def test_wrong_weights_are_refused_not_ignored(tmp_path) -> None:
    """A checkpoint of another architecture must fail, never fall back to random weights."""
    bad = tmp_path / "mnv2.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), bad)
    with pytest.raises(wts.WeightsError, match=r"mnv2\.pth: weights do not fit"):
        create_encoder("resnet50-trunc", weights=bad)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(wts.WeightsError, match=r"junk\.pth"):
        create_encoder("mobilenet-v2", weights=junk)


def test_unknown_encoder_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError, match=r"mobilenet-v2.*resnet50-trunc"):
        create_encoder("vgg99")


def test_timm_needs_weights_or_package(tmp_path) -> None:
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"pip install 'pathfl\[timm\]'"):
            create_encoder("timm:resnet18", weights=tmp_path / "w.pth")
    else:
        with pytest.raises(ConfigError, match="--weights"):
            create_encoder("timm:resnet18")


def test_encoders_command_lists_availability() -> None:
    from pathfl.cli import app

    result = CliRunner().invoke(app, ["encoders"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name in ("mobilenet-v2", "resnet50-trunc", "timm:<model>", "1280", "1024"):
        assert name in result.output


def test_timm_encoder_from_local_state_dict(tmp_path) -> None:
    """Runs only where the optional timm extra is installed."""
    timm = pytest.importorskip("timm")
    path = tmp_path / "rn18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)  # with head
    enc = create_encoder(
        "timm:resnet18", weights=path, options={"mean": [0.5, 0.5, 0.5], "input_px": 96}
    )
    assert enc.spec.name == "timm:resnet18" and enc.spec.feature_dim == 512
    assert enc.spec.mean == (0.5, 0.5, 0.5) and enc.spec.input_px == 96
    assert enc.spec.fixed_input_px
    out = InferenceRunner(enc)(torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8))
    assert out.shape == (2, 512)
    other = tmp_path / "other.pth"
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), other)
    with pytest.raises(ConfigError, match="do not fit"):
        create_encoder("timm:resnet18", weights=other)
