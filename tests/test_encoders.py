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


# --- pathology foundation models (pathfl.features.foundation) ---------------------------------
# Every entry is checked two ways, because the published checkpoints are gated and up to 4.5 GB:
# (1) its *exact* architecture is built on the meta device (no memory, no init) and compared with
#     the entry: feature dim, parameter count, prefix tokens; for the four ViT-H/g models a
#     header-only safetensors file of the exact names and shapes (a sparse file: no data
#     written) passes the loader's fit check and a one-tensor change fails it by name;
# (2) a real checkpoint — random weights of the entry's architecture (depth reduced to 1-2
#     blocks for the large ones, every other setting unchanged), saved the way users get it
#     (safetensors / pytorch_model.bin / .pth / a Hugging Face folder with config.json) — is
#     loaded through the same loader (``fm_loader.create``, which the registry factories call)
#     and a 224-px tile gives the documented dim *and the source model's own output*, which
#     random initialisation could not reproduce.
import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import struct  # noqa: E402

from pathfl.features import checkpoint as ckpt  # noqa: E402
from pathfl.features import fm_loader  # noqa: E402
from pathfl.features.encoders import ENCODERS  # noqa: E402
from pathfl.features.foundation import FOUNDATION_MODELS  # noqa: E402

GIANTS = ("uni2-h", "virchow2", "h-optimus-0", "gigapath")


@functools.cache
def _meta(name: str):
    """The exact architecture of a timm entry on the meta device (built once per session)."""
    return fm_loader.build_meta(FOUNDATION_MODELS[name])


def _small(name: str, depth: int = 1):
    fm = FOUNDATION_MODELS[name]
    key = "num_hidden_layers" if fm.library == "transformers" else "depth"
    return dataclasses.replace(fm, kwargs={**fm.kwargs, key: depth})


def _timm_source(fm):
    """A timm model of ``fm``'s architecture with random weights (what a checkpoint holds)."""
    import timm

    torch.manual_seed(0)
    return timm.create_model(fm.arch, pretrained=False, **fm_loader._timm_kwargs(fm)).eval()


def _hf_source(fm):
    from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTModel

    torch.manual_seed(0)
    kw = dict(fm.kwargs)
    heads = 12 if kw["hidden_size"] == 768 else 16
    if fm.arch == "vit":  # the published Phikon folder holds a ViTModel with its pooler
        cfg = ViTConfig(**kw, num_attention_heads=heads, intermediate_size=4 * kw["hidden_size"])
        return ViTModel(cfg, add_pooling_layer=True).eval()
    cfg = Dinov2Config(**kw, num_attention_heads=heads, image_size=224)
    return Dinov2Model(cfg).eval()


def _expected(fm, source, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        if fm.library == "transformers":
            return source(pixel_values=x).last_hidden_state[:, 0]
        out = source(x)
        if fm.pooling == "cls+mean":
            return torch.cat([out[:, 0], out[:, fm.prefix_tokens :].mean(1)], dim=-1)
        return out


def _cfg_of(fm):
    return dataclasses.replace(
        ENCODERS.meta(fm.name)["cfg"],
        spec=dataclasses.replace(ENCODERS.meta(fm.name)["cfg"].spec, name=fm.name),
    )


def _check_against(fm, enc, expected, *, n: int = 1, px: int = 224) -> None:
    """``n`` random ``px`` tiles through ``enc`` (the extraction's InferenceRunner) give the
    documented dim and ``expected(normalised tiles)``."""
    tile = torch.randint(
        0, 256, (n, 3, px, px), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    feats = InferenceRunner(enc)(tile)
    assert feats.shape == (n, fm.feature_dim)
    mean = torch.tensor(fm.mean).view(1, 3, 1, 1)
    std = torch.tensor(fm.std).view(1, 3, 1, 1)
    want = expected((tile.float() / 255 - mean) / std)
    assert torch.allclose(feats, want, rtol=1e-3, atol=1e-4), (feats - want).abs().max()


def _check_features(fm, enc, source) -> None:
    _check_against(fm, enc, lambda x: _expected(fm, source, x))


def test_every_entry_is_its_published_architecture() -> None:
    """Meta-device builds (no weights): dims, parameter counts and prefix tokens of the exact
    architectures. GigaPath's count is the one the authors' demo prints (1,134,953,984)."""
    from transformers import AutoConfig

    for name, fm in FOUNDATION_MODELS.items():
        if fm.library == "conch":  # timm trunk + pooler: v1 ViT-B 768 -> 512, v1.5 ViT-L -> 768
            model = _meta(name)
            assert model.ln_contrast.normalized_shape == (fm.feature_dim,), name
            width = {"conch": 768, "conch-v1.5": 1024}[name]
            assert model.trunk.num_features == width, name
            assert model.trunk.patch_embed.grid_size == (28, 28), name  # 448 px
            assert sum(p.numel() for p in model.parameters()) == fm.params, name
        elif fm.library == "timm":
            model = _meta(name)
            pooled = model.num_features * (2 if fm.pooling == "cls+mean" else 1)
            assert pooled == fm.feature_dim, name
            assert model.num_prefix_tokens == fm.prefix_tokens, name
            assert sum(p.numel() for p in model.parameters()) == fm.params, name
        else:
            cfg = AutoConfig.for_model(fm.arch, **fm.kwargs)
            assert cfg.hidden_size == fm.feature_dim, name
        spec = ENCODERS.meta(name)["cfg"].spec
        assert (spec.feature_dim, spec.input_px, spec.mean, spec.std) == (
            fm.feature_dim, fm.input_px, fm.mean, fm.std,
        )  # fmt: skip
    assert FOUNDATION_MODELS["gigapath"].params == 1_134_953_984
    assert FOUNDATION_MODELS["virchow2"].feature_dim == 2560


def _header_only_safetensors(path, shapes: dict) -> None:
    """A valid safetensors file with these names/shapes whose data region is a hole (sparse):
    the header is what the loader checks before reading any tensor."""
    header, offset = {}, 0
    for k, shape in shapes.items():
        n = 4 * int(np.prod(shape)) if shape else 4
        header[k] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + offset)


@pytest.mark.parametrize("name", GIANTS)
def test_giant_header_fits_exact_architecture(tmp_path, name) -> None:
    fm = FOUNDATION_MODELS[name]
    expected = ckpt.shapes_of(_meta(name).state_dict())
    path = tmp_path / "model.safetensors"
    _header_only_safetensors(path, expected)
    ckpt.check_fit(expected, ckpt.file_shapes(path), path, name)  # fits: no error
    wrong = dict(expected)
    wrong["pos_embed"] = (1, 5, 7)
    wrong.pop("blocks.0.attn.qkv.weight")
    wrong["head.extra"] = (3,)
    _header_only_safetensors(path, wrong)
    with pytest.raises(wts.WeightsError) as e:  # refused from the header: no 4.5 GB read
        fm_loader.load_model(fm, ckpt.locate_checkpoint(tmp_path))
    msg = str(e.value)
    assert str(path) in msg and "1 missing key(s): blocks.0.attn.qkv.weight" in msg
    assert "1 shape mismatch(es): pos_embed file [1, 5, 7]" in msg
    assert "head.extra" not in msg  # classifier heads are dropped, not refused


SAVES = {  # encoder -> (depth, how users get it)
    "uni": (2, "pth"),
    "uni2-h": (1, "safetensors"),
    "virchow2": (1, "bin"),
    "h-optimus-0": (1, "safetensors"),
    "gigapath": (1, "bin"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SAVES))
def test_timm_foundation_model_loads_saved_checkpoint(tmp_path, name) -> None:
    from safetensors.torch import save_file

    depth, fmt = SAVES[name]
    fm = _small(name, depth)
    source = _timm_source(fm)
    if fmt == "safetensors":
        path = tmp_path / "model.safetensors"
        save_file(source.state_dict(), path)
    else:
        path = tmp_path / ("pytorch_model.bin" if fmt == "bin" else "weights.pth")
        torch.save(source.state_dict(), path)
    weights = tmp_path if fmt == "bin" else path  # a snapshot folder, or the file itself
    enc = fm_loader.create(fm, _cfg_of(fm), weights)
    assert enc.weights_path == path and enc.weights_sha256 == sha256_file(path)
    _check_features(fm, enc, source)


def test_kaiko_full_size_from_safetensors_and_hf_cache(tmp_path, monkeypatch) -> None:
    """The full ViT-S/16 through the registry (create_encoder), from a file and from a
    pre-filled Hugging Face cache; another Kaiko size's file is refused by name."""
    from safetensors.torch import save_file

    fm = FOUNDATION_MODELS["kaiko-vits16"]
    source = _timm_source(fm)
    snap = tmp_path / "hub" / f"models--{fm.hub_id.replace('/', '--')}" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    save_file(source.state_dict(), snap / "model.safetensors")
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("abc123")
    enc = create_encoder("kaiko-vits16", weights=snap / "model.safetensors")
    _check_features(fm, enc, source)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    row = {r["name"]: r for r in list_encoders()}["kaiko-vits16"]
    assert row["available"] and row["weights"] == str(snap)
    assert create_encoder("kaiko-vits16").weights_path == snap / "model.safetensors"
    half = tmp_path / "half.pth"  # an fp16 checkpoint is loaded as fp32
    torch.save({k: v.half() for k, v in source.state_dict().items()}, half)
    enc = create_encoder("kaiko-vits16", weights=half)
    assert {p.dtype for p in enc.model.parameters()} == {torch.float32}
    assert InferenceRunner(enc)(torch.zeros(1, 3, 224, 224, dtype=torch.uint8)).shape == (1, 384)
    with pytest.raises(wts.WeightsError) as e:
        create_encoder("kaiko-vitb16", weights=snap / "model.safetensors")
    assert "model.safetensors: weights do not fit encoder 'kaiko-vitb16'" in str(e.value)
    assert "shape mismatch(es): blocks.0.attn.proj.bias file [384] vs model [768]" in str(e.value)


@pytest.mark.parametrize("name", ["phikon", "phikon-v2"])
def test_transformers_model_from_local_snapshot(tmp_path, name) -> None:
    """A Hugging Face folder (config.json + weights) saved by transformers itself, loaded with
    local_files_only; Phikon's pooler (unused: CLS of last_hidden_state) is not a misfit."""
    fm = _small(name, 2)
    source = _hf_source(fm)
    folder = tmp_path / name
    source.save_pretrained(folder)
    enc = fm_loader.create(fm, _cfg_of(fm), folder)
    assert enc.weights_path == folder / "model.safetensors" and enc.config_sha256
    _check_features(fm, enc, source)
    # a tensor missing from the file would be initialised at random by transformers: refused
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    gone = sorted(k for k in state if k.endswith("query.weight") or "q_proj.weight" in k)[0]
    del state[gone]
    save_file(state, folder / "model.safetensors")
    with pytest.raises(
        wts.WeightsError, match=r"model\.safetensors: weights do not fit .*1 missing"
    ):
        fm_loader.create(fm, _cfg_of(fm), folder)
    (folder / "config.json").unlink()
    with pytest.raises(wts.WeightsError, match=r"config\.json"):
        fm_loader.create(fm, _cfg_of(fm), folder)


def test_transformers_config_of_another_model_is_refused(tmp_path) -> None:
    source = _hf_source(_small("phikon", 1))
    source.save_pretrained(tmp_path)
    with pytest.raises(wts.WeightsError, match=r"not the phikon-v2 architecture.*model_type='vit'"):
        create_encoder("phikon-v2", weights=tmp_path)


def test_foundation_weights_missing_or_unsupported(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(wts.WeightsError) as e:
        create_encoder("uni")
    msg = str(e.value)
    assert "--weights" in msg and "MahmoodLab/UNI" in msg and "never downloads" in msg
    assert isinstance(e.value, ConfigError)  # exit 2
    with pytest.raises(wts.WeightsError, match="MahmoodLab/CONCH"):
        create_encoder("conch")  # built without open_clip: only its weights are needed
    (tmp_path / "two").mkdir()
    for n in ("a.pth", "b.pth"):
        (tmp_path / "two" / n).write_bytes(b"x")
    with pytest.raises(wts.WeightsError, match=r"two: expected one weights file.*a\.pth, b\.pth"):
        create_encoder("uni", weights=tmp_path / "two")


def test_encoders_command_shows_native_resolution(monkeypatch) -> None:
    from pathfl.cli import app

    monkeypatch.setenv("COLUMNS", "300")
    result = CliRunner().invoke(app, ["encoders"])
    assert result.exit_code == 0, result.output
    lines = {ln.split("│")[1].strip(): ln for ln in result.output.splitlines() if ln.count("│") > 3}
    assert "2560" in lines["virchow2"] and "2 / 1 / 0.5 / 0.25" in lines["virchow2"]
    assert "0.5" in lines["uni"] and "1024" in lines["uni"] and "CC-BY-NC-ND" in result.output
    assert "none" in lines["mobilenet-v2"] and "512" in lines["conch"] and "448" in lines["conch"]


# --- CONCH and CONCH v1.5 (pathfl.features.conch) -------------------------------------------
# Saved as users get them: CONCH v1.5 a `pytorch_model_vision.bin` state dict (keys trunk.* /
# attn_pool_contrast.* / ln_contrast.*) whose position embedding is on the 14 x 14 grid of a
# 224-px ViT; CONCH the whole CoCa model's `pytorch_model.bin` (visual.* with the caption
# pooler and projection, text.*, text_decoder.*, logit_scale). The expected features are
# computed here from the saved tensors with plain ops (the authors' forward: v1.5's position
# embedding interpolated to the 28 x 28 grid, the pooler as explicit softmax attention), not
# with pathfl's modules.


def _conch_source(name: str, depth: int):
    """Random tensors of the published layout (CONCH v1.5: position embedding at 224 px)."""
    from pathfl.features import conch

    fm = _small(name, depth)
    v15 = name == "conch-v1.5"
    torch.manual_seed(0)
    kw = {**fm.kwargs, "img_size": 224} if v15 else fm.kwargs
    tower = conch.build(dataclasses.replace(fm, kwargs=kw))
    state = {k: v.detach().clone() for k, v in tower.state_dict().items()}
    for k in ("attn_pool_contrast.ln_q.weight", "ln_contrast.bias", "trunk.norm.bias"):
        state[k] = torch.randn_like(state[k])  # nothing left at its initial value
    return fm, state


def _attend(q, k, v, heads: int) -> torch.Tensor:
    d = q.shape[-1] // heads
    outs = []
    for h in range(heads):
        sl = slice(d * h, d * (h + 1))
        att = torch.softmax((q[:, sl] @ k[..., sl].transpose(1, 2)) / d**0.5, dim=-1)
        outs.append(att @ v[..., sl])
    return torch.cat(outs, dim=-1)


def _conch_reference(name: str, state: dict, x: torch.Tensor, depth: int) -> torch.Tensor:
    import timm
    import torch.nn.functional as F  # noqa: N812

    v15 = name == "conch-v1.5"
    arch, width, dim = (
        ("vit_large_patch16_224", 1024, 768) if v15 else ("vit_base_patch16_224", 768, 512)
    )
    vit = timm.create_model(
        arch, pretrained=False, img_size=224 if v15 else 448, depth=depth,
        init_values=1.0 if v15 else None, num_classes=0,
    ).eval()  # fmt: skip
    vit.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("trunk.")})
    with torch.inference_mode():
        tok = vit.patch_embed.proj(x).flatten(2).transpose(1, 2)  # the conv, at any size
        pos = state["trunk.pos_embed"]
        if v15:
            grid = pos[:, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, scale_factor=(28.1 / 14, 28.1 / 14), mode="bicubic")
            pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, 784, -1)], dim=1)
        tok = torch.cat([vit.cls_token.expand(len(x), -1, -1), tok], dim=1) + pos
        tok = vit.norm(vit.blocks(tok))
        p = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("attn_pool")}
        ctx = F.layer_norm(tok, (width,), p["ln_k.weight"], p["ln_k.bias"])
        q = F.layer_norm(p["query"], (dim,), p["ln_q.weight"], p["ln_q.bias"])
        if v15:
            k, v = (ctx @ p["to_kv.weight"].T).chunk(2, dim=-1)
            pooled = _attend(q @ p["to_q.weight"].T, k, v, 8) @ p["to_out.weight"].T
        else:
            b_q, b_k, b_v = p["attn.in_proj_bias"].chunk(3)
            k = ctx @ p["attn.k_proj_weight"].T + b_k
            v = ctx @ p["attn.v_proj_weight"].T + b_v
            out = _attend(q @ p["attn.q_proj_weight"].T + b_q, k, v, 8)
            pooled = out @ p["attn.out_proj.weight"].T + p["attn.out_proj.bias"]
        return F.layer_norm(
            pooled[:, 0], (dim,), state["ln_contrast.weight"], state["ln_contrast.bias"]
        )


def _coca_checkpoint(state: dict) -> dict:
    """CONCH's published file: the whole CoCa model, the vision tower under ``visual.``."""
    g = torch.Generator().manual_seed(3)
    return {
        **{f"visual.{k}": v for k, v in state.items()},
        "visual.attn_pool_caption.query": torch.randn(256, 768, generator=g),
        "visual.ln_caption.weight": torch.ones(768),
        "visual.proj_contrast": torch.randn(512, 512, generator=g),
        "text.token_embedding.weight": torch.randn(32007, 8, generator=g),
        "text_decoder.ln_final.weight": torch.ones(768),
        "logit_scale": torch.tensor(2.6),
    }


@pytest.mark.parametrize("name", ["conch", "conch-v1.5"])
def test_conch_loads_its_published_checkpoint(tmp_path, name) -> None:
    depth = 1
    fm, state = _conch_source(name, depth)
    snap = tmp_path / name
    snap.mkdir()
    if name == "conch-v1.5":
        assert state["trunk.pos_embed"].shape == (1, 197, 1024)  # as published: 224-px grid
        path, saved = snap / "pytorch_model_vision.bin", state
    else:
        path, saved = snap / "pytorch_model.bin", _coca_checkpoint(state)
    torch.save(saved, path)
    (snap / "meta.yaml").write_text("model: conch\n")  # the snapshot's other files
    enc = fm_loader.create(fm, _cfg_of(fm), snap)
    assert enc.weights_path == path and enc.weights_sha256 == sha256_file(path)
    _check_against(fm, enc, lambda x: _conch_reference(name, state, x, depth), n=2, px=448)
    # a truncated file, or one of the other CONCH, is refused by name, never half-loaded
    bad = dict(saved)
    bad.pop(next(k for k in bad if k.endswith("ln_contrast.weight")))
    torch.save(bad, path)
    with pytest.raises(wts.WeightsError) as e:
        fm_loader.create(fm, _cfg_of(fm), snap)
    assert str(path) in str(e.value) and "ln_contrast.weight" in str(e.value)
    other = "conch" if name == "conch-v1.5" else "conch-v1.5"
    with pytest.raises(wts.WeightsError, match="weights do not fit"):
        fm_loader.create(_small(other, depth), _cfg_of(_small(other, depth)), snap)


def test_conch_v15_full_size_header_fits(tmp_path) -> None:
    """The full architecture against a header-only safetensors file of the published names
    and shapes (position embedding at 224 px); another width is refused from the header."""
    from pathfl.features import conch

    fm = FOUNDATION_MODELS["conch-v1.5"]
    expected = ckpt.shapes_of(_meta("conch-v1.5").state_dict())
    published = {**expected, "trunk.pos_embed": (1, 197, 1024)}
    path = tmp_path / "model.safetensors"
    _header_only_safetensors(path, published)
    ckpt.check_fit(expected, conch.header_shapes(ckpt.file_shapes(path), expected), path, "c")
    _header_only_safetensors(path, {**published, "trunk.pos_embed": (1, 197, 768)})
    with pytest.raises(wts.WeightsError, match=r"shape mismatch.*trunk\.pos_embed"):
        fm_loader.load_model(fm, ckpt.locate_checkpoint(path))
