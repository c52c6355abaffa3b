"""`pathfl tile` reruns never destroy results: a rerun that fails for a slide leaves that
slide's earlier coords file, thumbnail and GeoJSON untouched (and says so); invalid mpp
overrides are usage errors (exit 2) and write nothing."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from slides import synthetic_tissue, write_tiled_tiff
from typer.testing import CliRunner

from pathfl.cli import app
from pathfl.formats.coords_h5 import read_coords
from pathfl.tiling.pipeline import output_paths

runner = CliRunner()


@pytest.fixture(scope="module")
def nompp_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("src_nompp")
    return write_tiled_tiff(d / "nompp.tif", synthetic_tissue(768, 1024, seed=4), mpp=None)


@pytest.fixture(scope="module")
def good_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("src_good")
    return write_tiled_tiff(d / "good.tif", synthetic_tissue(768, 1024, seed=3), mpp=0.5)


def tile(*args: str | Path) -> tuple[int, str]:
    res = runner.invoke(app, ["tile", *map(str, args)])
    return res.exit_code, res.output


def manifest(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "manifest.csv", newline="") as f:
        return {r["slide_id"]: r for r in csv.DictReader(f)}


def snapshot(out: Path, slide_id: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in output_paths(out, slide_id)}


def no_temp_files(out: Path) -> bool:
    return not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_failing_rerun_without_the_override_keeps_the_good_outputs(
    tmp_path: Path, nompp_slide: Path
) -> None:
    out = tmp_path / "out"
    assert tile(nompp_slide, "--out", out, "--mpp-override", "0.5")[0] == 0
    before = snapshot(out, "nompp")
    assert len(before) == 3 and all(before.values())

    code, output = tile(nompp_slide, "--out", out)  # no mpp now: the slide fails
    assert code == 1, output
    row = manifest(out)["nompp"]
    assert row["status"] == "failed" and "--mpp-override" in row["error"], row
    assert "kept unchanged" in row["error"], row
    assert snapshot(out, "nompp") == before  # coords, thumbnail and GeoJSON untouched
    _, attrs = read_coords(out / "coords" / "nompp.h5")
    assert attrs["mpp_level0"] == 0.5 and attrs["mpp_source"] == "override"
    assert no_temp_files(out)

    # the override again: the kept file matches, nothing is recomputed
    assert tile(nompp_slide, "--out", out, "--mpp-override", "0.5")[0] == 0
    assert manifest(out)["nompp"]["status"] == "skipped"


def test_no_tissue_rerun_keeps_the_earlier_thumbnail(tmp_path: Path, good_slide: Path) -> None:
    out = tmp_path / "out"
    assert tile(good_slide, "--out", out)[0] == 0
    before = snapshot(out, "good")
    code, output = tile(good_slide, "--out", out, "--tissue-threshold", "0.99")
    assert code == 1, output
    row = manifest(out)["good"]
    assert "no tissue" in row["error"] and "kept unchanged" in row["error"], row
    assert snapshot(out, "good") == before

    # without earlier outputs the failure still leaves its QC picture (and no coords)
    out2 = tmp_path / "out2"
    assert tile(good_slide, "--out", out2, "--tissue-threshold", "0.99")[0] == 1
    coords, png, geojson = output_paths(out2, "good")
    assert png.is_file() and not coords.exists() and not geojson.exists()
    assert "kept" not in manifest(out2)["good"]["error"]


def test_a_write_failure_leaves_all_earlier_outputs(
    tmp_path: Path, good_slide: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The three files of a slide are renamed together at the end: a failure while writing
    the last one (here the coords file) leaves the earlier thumbnail and GeoJSON too."""
    from pathfl.tiling import SlideJob, TileConfig, pipeline, run_batch

    out = tmp_path / "out"
    job = SlideJob("good", good_slide)
    assert run_batch([job], out, TileConfig())[0].status == "ok"
    before = snapshot(out, "good")

    def disk_full(*_a: object, **_k: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline, "write_coords", disk_full)
    res = run_batch([job], out, TileConfig(overwrite=True))[0]
    assert res.status == "failed" and "No space left" in res.error, res
    assert "kept unchanged" in res.error
    assert snapshot(out, "good") == before
    assert no_temp_files(out)


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "-inf"])
def test_invalid_mpp_override_is_a_usage_error(
    tmp_path: Path, good_slide: Path, value: str
) -> None:
    out = tmp_path / "out"
    code, output = tile(good_slide, "--out", out, f"--mpp-override={value}")
    assert code == 2, output
    assert "--mpp-override" in output and "mpp must be > 0" in output, output
    assert not out.exists()


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "abc"])
def test_invalid_mpp_in_slides_csv_is_a_usage_error(
    tmp_path: Path, good_slide: Path, value: str
) -> None:
    sheet = tmp_path / "slides.csv"
    sheet.write_text(f"slide_id,path,mpp\nok,{good_slide},0.5\nbad,{good_slide},{value}\n")
    out = tmp_path / "out"
    code, output = tile("--slides-csv", sheet, "--out", out)
    assert code == 2, output
    assert f"{sheet}:3" in output and "mpp" in output, output
    assert not out.exists()
