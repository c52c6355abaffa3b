"""The CLI's one config merge and the options derived from TrainConfig: every TrainConfig field
can be set on the command line and in YAML, the command line beats the YAML file which beats
the library default, and an unknown YAML key is one clear error (exit 2) naming the file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from pathfl.cli import app
from pathfl.cli.train import _RENAMED, _train_config
from pathfl.config import ConfigError, merge_cli_and_yaml, merge_config
from pathfl.survival.config import FIELD_HELP, TrainConfig, default
from pathfl.survival.synthetic import make_cohort

RUNNER = CliRunner()
OPTION_OF = {field: option for option, field in _RENAMED.items()}
FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]


def _other_value(name: str) -> Any:
    """A valid value of TrainConfig field ``name`` that differs from its default."""
    special = {
        "model": "chowder",
        "loss": "nll",
        "lr_schedule": "constant",
        "covariates": ["age"],
        "time_unit": "months",
    }
    if name in special:
        return special[name]
    d = default(name)
    if isinstance(d, bool):
        return not d
    if isinstance(d, int):
        return d + 1
    assert isinstance(d, float), name
    return round(d + 0.05, 6)


def _cli_args(name: str, value: Any) -> list[str]:
    option = "--" + OPTION_OF.get(name, name).replace("_", "-")
    if isinstance(value, bool):
        return [option if value else option.replace("--", "--no-", 1)]
    if isinstance(value, list):
        return [option, ",".join(value)]
    return [option, str(value)]


def _parse(*args: str) -> TrainConfig:
    """The TrainConfig `pathfl train ARGS` would train with (real click parsing + merge)."""
    command = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    with command.make_context("train", [str(a) for a in args]) as ctx:
        return _train_config(merge_cli_and_yaml(ctx, ctx.params["config"]))


def test_every_field_has_help_and_an_option() -> None:
    import inspect

    from pathfl.cli.train import train

    assert set(FIELD_HELP) == set(FIELDS)
    options = set(inspect.signature(train).parameters)
    assert {OPTION_OF.get(f, f) for f in FIELDS} <= options


@pytest.mark.parametrize("name", FIELDS)
def test_every_field_settable_on_the_command_line(name: str) -> None:
    value = _other_value(name)
    assert value != default(name)
    cfg = _parse(*_cli_args(name, value))
    assert getattr(cfg, name) == value
    others = {f: getattr(cfg, f) for f in FIELDS if f != name}
    assert others == {f: default(f) for f in FIELDS if f != name}  # nothing else moved


def test_every_field_settable_in_yaml(tmp_path: Path) -> None:
    values = {name: _other_value(name) for name in FIELDS}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({OPTION_OF.get(k, k): v for k, v in values.items()}))
    cfg = _parse("--config", str(path))
    assert {f: getattr(cfg, f) for f in FIELDS} == values


def test_command_line_beats_yaml_beats_default(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("epochs: 7\nattn-dim: 8\nchowder_k: 2\n")
    cfg = _parse("--config", str(path), "--epochs", "3", "--chowder-k", "9")
    assert cfg.epochs == 3 and cfg.chowder_k == 9  # command line
    assert cfg.attn_dim == 8  # YAML file
    assert cfg.transmil_heads == default("transmil_heads")  # library default
    assert _parse("--epochs", "3").attn_dim == default("attn_dim")


def test_unknown_yaml_key_names_the_file_and_lists_valid_keys(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("epochz: 3\nlr: 0.01\n")
    r = RUNNER.invoke(
        app,
        ["train", "--features", str(tmp_path), "--clinical", str(path), "--out",
         str(tmp_path / "run"), "--config", str(path)],
    )  # fmt: skip
    assert r.exit_code == 2, r.output
    message = " ".join(r.output.split())
    assert f"{path}: unknown option(s) epochz; valid:" in message
    for option in ("attn_dim", "chowder_k", "transmil_landmarks", "early_stopping", "threads"):
        assert option in message
    assert "Traceback" not in r.output and not (tmp_path / "run").exists()


def test_train_run_records_model_options_set_on_the_command_line(tmp_path: Path) -> None:
    c = make_cohort(tmp_path, n_patients=12, feature_dim=8, tiles=(6, 10), grid_cols=4, seed=3)
    path = tmp_path / "train.yaml"
    path.write_text("chowder_k: 2\nepochs: 5\n")
    r = RUNNER.invoke(
        app,
        ["train", "-f", str(c.features_dir), "--clinical", str(c.clinical_csv), "--out",
         str(tmp_path / "run"), "--folds", "1", "--epochs", "1", "--min-steps", "2",
         "--n-boot", "5", "--model", "chowder", "--hidden-dim", "8", "--grad-clip", "1.5",
         "--threads", "1", "--config", str(path)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    used = json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]
    assert used["model"] == "chowder" and used["chowder_k"] == 2 and used["grad_clip"] == 1.5
    assert used["epochs"] == 1 and used["min_steps"] == 2  # command line over YAML


def test_help_lists_the_registries() -> None:
    from pathfl.slide import list_readers
    from pathfl.survival.heads import list_heads
    from pathfl.survival.models import list_models

    def help_text(*command: str) -> str:
        r = RUNNER.invoke(app, [*command, "--help"])
        assert r.exit_code == 0, r.output
        return " ".join(r.output.replace("│", " ").split())  # rich's boxes, wrapped lines

    text = help_text("train")
    assert "MIL model: " + " | ".join(list_models()) in text
    assert " | ".join(list_heads()) in text and "(default: abmil)" in text
    for command in ("tile", "heatmap"):
        assert " | ".join(list_readers()) in help_text(command)
    from pathfl.features.encoders import list_encoders
    from pathfl.features.inference import PRECISIONS
    from pathfl.fl.aggregate import list_aggregators
    from pathfl.formats.features_h5 import FEATURE_DTYPES

    text = help_text("extract")
    encoders = [e["name"] for e in list_encoders()]
    for names in (encoders, PRECISIONS, FEATURE_DTYPES):
        assert " | ".join(names) in text
    assert " | ".join(list_aggregators()) in help_text("fl", "simulate")


def test_predict_and_heatmap_read_config(tmp_path: Path) -> None:
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    path = tmp_path / "predict.yaml"
    path.write_text(f"run: {empty}\nfeatures: {tmp_path}\nout: {tmp_path / 'r.csv'}\n")
    r = RUNNER.invoke(app, ["predict", "--config", str(path)])
    assert r.exit_code == 2 and "not a pathfl run directory" in r.output, r.output
    r = RUNNER.invoke(app, ["predict", "--features", str(tmp_path)])
    assert r.exit_code == 2 and "--run is required" in r.output
    path.write_text("slide_idz: a\n")
    r = RUNNER.invoke(app, ["heatmap", "--config", str(path)])
    assert r.exit_code == 2 and f"{path}: unknown option(s) slide_idz" in r.output


def test_fl_config_merge_is_the_same(tmp_path: Path) -> None:
    from pathfl.fl.fl_config import effective_config, valid_keys

    path = tmp_path / "fl.yaml"
    path.write_text("rounds: 4\nlocal-epochs: 2\nattn_dim: 8\n")
    user = merge_config(path, given={"rounds": 6}, valid=valid_keys())
    cfg = effective_config(user)
    assert cfg["rounds"] == 6 and cfg["local_epochs"] == 2 and cfg["train"]["attn_dim"] == 8
    path.write_text("roundz: 4\n")
    with pytest.raises(ConfigError, match=rf"{path}: unknown option\(s\) roundz; valid: .*rounds"):
        merge_config(path, given={}, valid=valid_keys())


def _help_text(command: str) -> str:
    r = RUNNER.invoke(app, [command, "--help"], env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    return " ".join(r.output.replace("│", " ").split())  # rich's boxes, wrapped lines


def _tile_config(*args: str) -> Any:
    """The TileConfig `pathfl tile ARGS` would tile with (real click parsing + merge)."""
    from pathfl.cli.tile import _build_config

    command = typer.main.get_command(app).commands["tile"]  # type: ignore[attr-defined]
    with command.make_context("tile", [str(a) for a in args]) as ctx:
        return _build_config(merge_cli_and_yaml(ctx, ctx.params["config"]))


def test_tile_options_cover_the_tiling_dataclasses_with_their_defaults() -> None:
    """`pathfl tile` generates one option per GridParams / TissueParams field (the dataclasses
    live in a standard-library module): every field has a help text and an option whose help
    states the dataclass default, and no option given = the dataclass defaults. TileConfig's
    own fields are declared by hand with the same defaults."""
    import inspect

    from pathfl.cli.options import field_default
    from pathfl.cli.tile import GRID_OPTIONS, TISSUE_OPTIONS, tile
    from pathfl.tiling import GridParams, TileConfig, TissueParams
    from pathfl.tiling.params import GRID_HELP, TISSUE_HELP

    declared = inspect.signature(tile).parameters
    text = _help_text("tile")
    for cls, mapping, helps in ((GridParams, GRID_OPTIONS, GRID_HELP),
                                (TissueParams, TISSUE_OPTIONS, TISSUE_HELP)):  # fmt: skip
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert set(mapping.values()) == set(fields) == set(helps), cls
        for option, name in mapping.items():
            assert option in declared and declared[option].default.default is None, option
            flag = "--" + option.replace("_", "-")
            assert f"{flag} " in text, option
            assert f"{helps[name]} (default: {field_default(fields[name])})" in text, option
    assert "--remove-pen --keep-pen" in text
    cfg = _tile_config("--out", "o")
    assert cfg.grid == GridParams() and cfg.tissue == TissueParams()
    tile_fields = {"backend": "backend", "thumbnail_px": "thumbnail_px", "overwrite": "overwrite"}
    fields = {f.name: f for f in dataclasses.fields(TileConfig) if f.name not in ("grid", "tissue")}
    assert set(tile_fields.values()) == set(fields)
    for option, name in tile_fields.items():
        assert declared[option].default.default == field_default(fields[name]), option


@pytest.mark.parametrize(
    "args, where, expected",
    [
        (["--mpp", "1.0"], "grid", {"target_mpp": 1.0}),
        (["--tile-px", "64"], "grid", {"tile_px": 64}),
        (["--overlap", "8"], "grid", {"overlap_px": 8}),
        (["--mpp-tolerance", "0.1"], "grid", {"mpp_tolerance": 0.1}),
        (["--min-tissue", "0.5"], "grid", {"min_tissue_fraction": 0.5}),
        (["--tissue-mask-mpp", "8"], "tissue", {"mask_mpp": 8.0}),
        (["--tissue-threshold", "0.1"], "tissue", {"saturation_threshold": 0.1}),
        (["--tissue-min-saturation", "0.01"], "tissue", {"min_saturation": 0.01}),
        (["--tissue-max-saturation", "0.2"], "tissue", {"max_saturation": 0.2}),
        (["--tissue-blur-um", "5"], "tissue", {"blur_um": 5.0}),
        (["--tissue-close-um", "0"], "tissue", {"close_um": 0.0}),
        (["--tissue-min-object-um2", "1"], "tissue", {"min_object_um2": 1.0}),
        (["--tissue-max-hole-um2", "2"], "tissue", {"max_hole_um2": 2.0}),
        (["--remove-pen"], "tissue", {"remove_pen": True}),
    ],
)
def test_every_tiling_field_settable_on_the_command_line(
    args: list[str], where: str, expected: dict[str, Any]
) -> None:
    from pathfl.tiling import GridParams, TissueParams

    cfg = _tile_config("--out", "o", *args)
    default = GridParams() if where == "grid" else TissueParams()
    assert getattr(cfg, where) == dataclasses.replace(default, **expected)
    assert getattr(cfg, "tissue" if where == "grid" else "grid") == (
        TissueParams() if where == "grid" else GridParams()
    )  # nothing else moved


def test_tile_command_line_beats_yaml_beats_default(tmp_path: Path) -> None:
    path = tmp_path / "tile.yaml"
    path.write_text("mpp: 1.0\ntile-px: 64\nremove_pen: true\n")
    cfg = _tile_config("--out", "o", "--config", str(path), "--tile-px", "96", "--keep-pen")
    assert cfg.grid.tile_px == 96 and cfg.tissue.remove_pen is False  # command line
    assert cfg.grid.target_mpp == 1.0  # YAML file
    assert cfg.grid.overlap_px == 0 and cfg.tissue.mask_mpp == 4.0  # library default


def test_tile_yaml_values_are_converted_or_named_when_wrong(tmp_path: Path) -> None:
    from pathfl.cli.tile import GRID_OPTIONS, TISSUE_OPTIONS
    from pathfl.config import dataclass_from
    from pathfl.tiling import GridParams, TissueParams

    path = tmp_path / "tile.yaml"
    path.write_text(f"out: {tmp_path / 'o'}\ntile_px: abc\n")
    r = RUNNER.invoke(app, ["tile", str(tmp_path / "none.svs"), "--config", str(path)])
    assert r.exit_code == 2 and "invalid tiling parameter: tile_px='abc'" in r.output, r.output
    values = {"mpp": "1", "tile_px": 64.0, "overlap": 0, "mpp_tolerance": 0.05, "min_tissue": 1}
    grid = dataclass_from(GridParams, values, fields=GRID_OPTIONS)
    assert grid == GridParams(target_mpp=1.0, tile_px=64, min_tissue_fraction=1.0)
    tissue_values = {o: None if o == "tissue_threshold" else 1 for o in TISSUE_OPTIONS}
    tissue = dataclass_from(TissueParams, tissue_values, fields=TISSUE_OPTIONS)
    assert tissue.saturation_threshold is None and tissue.remove_pen is True


def _extract_options(*args: str) -> Any:
    """The ExtractOptions `pathfl extract ARGS` would run with (real click parsing + merge)."""
    from pathfl.cli.extract import _extract_options as build

    command = typer.main.get_command(app).commands["extract"]  # type: ignore[attr-defined]
    with command.make_context("extract", [str(a) for a in args]) as ctx:
        return build(merge_cli_and_yaml(ctx, ctx.params["config"]))


def test_extract_options_state_the_extract_options_defaults() -> None:
    """`pathfl extract` generates one option per ExtractOptions field (the dataclass lives in a
    standard-library module), whose help states the field's default; the fields spelled
    differently on the command line (-1 = auto workers, 0 = torch's threads, KEY=VALUE encoder
    options, K/N shard) are declared by hand."""
    import inspect

    from pathfl.cli.extract import extract_cmd
    from pathfl.cli.options import field_default
    from pathfl.features.options import EXTRACT_HELP, ExtractOptions

    declared = inspect.signature(extract_cmd).parameters
    fields = {f.name: f for f in dataclasses.fields(ExtractOptions)}
    assert set(EXTRACT_HELP) == set(fields)
    spelled = {"encoder_options": "encoder_option", "workers": "workers", "threads": "threads",
               "shard": "shard"}  # fmt: skip
    assert set(fields) - set(spelled) <= set(declared)
    text = _help_text("extract")
    for name in set(fields) - set(spelled):
        assert declared[name].default.default is None, name
        assert f"(default: {field_default(fields[name])})" in text, name
        assert EXTRACT_HELP[name] in text, name
    assert set(spelled.values()) <= set(declared)
    opts = _extract_options("--tiles", "t", "--out", "o")
    assert {n: getattr(opts, n) for n in set(fields) - set(spelled)} == {
        n: field_default(fields[n]) for n in set(fields) - set(spelled)
    }
    assert opts.threads is None and opts.shard is None and opts.encoder_options == {}


def test_every_extract_field_settable_on_the_command_line(tmp_path: Path) -> None:
    from pathfl.features.options import ExtractOptions

    args = ["--encoder", "resnet50-trunc", "--weights", str(tmp_path / "w.pt"),
            "--batch-size", "8", "--device", "cuda:1", "--precision", "bf16",
            "--dtype", "float16", "--overwrite", "--slide-dir", str(tmp_path),
            "--workers", "3", "--threads", "2", "--shard", "1/4",
            "--encoder-option", "mean=[0.5,0.5,0.5]"]  # fmt: skip
    opts = _extract_options("--tiles", "t", "--out", "o", *args)
    assert opts == ExtractOptions(
        encoder="resnet50-trunc",
        weights=tmp_path / "w.pt",
        encoder_options={"mean": [0.5, 0.5, 0.5]},
        batch_size=8,
        device="cuda:1",
        precision="bf16",
        dtype="float16",
        workers=3,
        shard=(1, 4),
        overwrite=True,
        slide_dir=tmp_path,
        threads=2,
    )
    path = tmp_path / "extract.yaml"
    path.write_text("batch-size: 16\nprecision: fp16\noverwrite: true\n")
    opts = _extract_options("--tiles", "t", "--out", "o", "--config", str(path),
                            "--batch-size", "4", "--no-overwrite")  # fmt: skip
    assert opts.batch_size == 4 and opts.overwrite is False  # command line
    assert opts.precision == "fp16" and opts.dtype == "float32"  # YAML file, default


def test_cli_start_imports_no_heavy_library() -> None:
    """The options are generated from the dataclasses at import, so the modules holding them
    must stay light: `pathfl --help` (a real process) loads none of torch, numpy, cv2, h5py,
    flwr."""
    import subprocess
    import sys

    code = (
        "import runpy, sys; sys.argv = ['pathfl', '--help']\n"
        "try: runpy.run_module('pathfl', run_name='__main__')\n"
        "except SystemExit: pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules}"
        " & {'torch', 'numpy', 'cv2', 'h5py', 'flwr'}))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Usage" in r.stdout and r.stdout.strip().splitlines()[-1] == "[]", r.stdout
