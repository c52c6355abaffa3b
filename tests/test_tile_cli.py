"""`pathfl tile` end to end: bad inputs in a batch, resume by fingerprint, YAML config, slides
CSV, exit codes, and a real process killed with SIGKILL mid-batch then rerun."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
from slides import synthetic_tissue, write_blank_tiff, write_tiled_tiff
from typer.testing import CliRunner

from pathfl.cli import app
from pathfl.formats.coords_h5 import read_coords

runner = CliRunner()


@pytest.fixture(scope="module")
def good_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("src")
    return write_tiled_tiff(d / "good.tif", synthetic_tissue(768, 1024, seed=3), mpp=0.5)


@pytest.fixture(scope="module")
def nompp_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("src_nompp")
    return write_tiled_tiff(d / "nompp.tif", synthetic_tissue(768, 1024, seed=4), mpp=None)


def manifest(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "manifest.csv", newline="") as f:
        return {r["slide_id"]: r for r in csv.DictReader(f)}


def tile(*args: str | Path) -> tuple[int, str]:
    res = runner.invoke(app, ["tile", *map(str, args)])
    return res.exit_code, res.output


def no_temp_files(out: Path) -> bool:
    return not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_bad_inputs_fail_one_by_one_and_batch_goes_on(
    tmp_path: Path, good_slide: Path, nompp_slide: Path
) -> None:
    src = tmp_path / "slides"
    src.mkdir()
    shutil.copy(good_slide, src / "good.tif")
    shutil.copy(nompp_slide, src / "nompp.tif")
    write_blank_tiff(src / "blank.tif", 1024, 1024)
    data = good_slide.read_bytes()
    (src / "truncated.tif").write_bytes(data[: len(data) * 2 // 3])
    (src / "notaslide.svs").write_text("patient,notes\n1,not an image\n")
    out = tmp_path / "out"

    code, output = tile(src, "--out", out)
    assert code == 1, output
    rows = manifest(out)
    assert rows["good"]["status"] == "ok" and int(rows["good"]["n_tiles"]) > 0
    expected = {
        "nompp": "--mpp-override",
        "blank": "no tissue",
        "truncated": "truncated",
        "notaslide": "notaslide.svs",
    }
    for sid, phrase in expected.items():
        assert rows[sid]["status"] == "failed", sid
        assert phrase in rows[sid]["error"], (sid, rows[sid]["error"])
    # only the good slide has a coords file; nothing half-written anywhere
    assert sorted(p.name for p in (out / "coords").iterdir()) == ["good.h5"]
    assert no_temp_files(out)
    # the QC picture of the blank slide is there to show why it failed
    assert (out / "thumbnails" / "blank.png").is_file()

    # supply the missing mpp through a slides CSV: only that slide is computed now
    sheet = tmp_path / "slides.csv"
    sheet.write_text("slide_id,path,mpp\nnompp,slides/nompp.tif,0.5\n")
    code, output = tile(src / "good.tif", "--slides-csv", sheet, "--out", out)
    assert code == 0, output
    rows = manifest(out)
    assert rows["good"]["status"] == "skipped"
    assert rows["nompp"]["status"] == "ok" and rows["nompp"]["mpp"] == "0.5"
    assert rows["blank"]["status"] == "failed"  # earlier rows are kept


def test_resume_skip_recompute_overwrite(tmp_path: Path, good_slide: Path) -> None:
    out = tmp_path / "out"
    h5 = out / "coords" / "good.h5"
    assert tile(good_slide, "--out", out)[0] == 0
    first_fp = read_coords(h5)[1]["fingerprint"]
    mtime = h5.stat().st_mtime_ns

    assert tile(good_slide, "--out", out)[0] == 0
    assert manifest(out)["good"]["status"] == "skipped"
    assert h5.stat().st_mtime_ns == mtime  # untouched

    assert tile(good_slide, "--out", out, "--tile-px", "112")[0] == 0
    _, attrs = read_coords(h5)
    assert manifest(out)["good"]["status"] == "ok"
    assert attrs["tile_size"] == 112 and attrs["fingerprint"] != first_fp

    mtime = h5.stat().st_mtime_ns
    assert tile(good_slide, "--out", out, "--tile-px", "112", "--overwrite")[0] == 0
    assert manifest(out)["good"]["status"] == "ok" and h5.stat().st_mtime_ns != mtime


def test_yaml_config_and_command_line_precedence(tmp_path: Path, good_slide: Path) -> None:
    cfg = tmp_path / "tile.yaml"
    cfg.write_text("mpp: 1.0\ntile-px: 64\nmin_tissue: 0.5\n")
    out = tmp_path / "out"
    code, output = tile(good_slide, "--out", out, "--config", cfg, "--mpp", "0.5")
    assert code == 0, output
    _, attrs = read_coords(out / "coords" / "good.h5")
    assert attrs["target_mpp"] == 0.5  # command line wins
    assert attrs["tile_size"] == 64 and attrs["min_tissue_fraction"] == 0.5  # from the file


@pytest.mark.parametrize(
    "extra, phrase",
    [
        (["--backend", "bioformats"], "unknown backend"),
        (["--tile-px", "4"], "tile size"),
        (["--workers", "0"], "--workers"),
        (["--config", "missing.yaml"], "not found"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, good_slide: Path, extra: list, phrase: str) -> None:
    code, output = tile(good_slide, "--out", tmp_path / "out", *extra)
    assert code == 2 and phrase in output, output


def test_usage_errors_paths_and_config_keys(tmp_path: Path, good_slide: Path) -> None:
    assert tile(tmp_path / "nope.svs", "--out", tmp_path / "o")[0] == 2
    assert tile(good_slide)[0] == 2  # no --out
    bad = tmp_path / "bad.yaml"
    bad.write_text("tile_size: 224\n")
    code, output = tile(good_slide, "--out", tmp_path / "o", "--config", bad)
    assert code == 2 and "tile_size" in output


def test_mpp_override_option(tmp_path: Path, nompp_slide: Path) -> None:
    out = tmp_path / "out"
    assert tile(nompp_slide, "--out", out)[0] == 1
    assert tile(nompp_slide, "--out", out, "--mpp-override", "0.5")[0] == 0
    _, attrs = read_coords(out / "coords" / "nompp.h5")
    assert attrs["mpp_level0"] == 0.5 and attrs["mpp_source"] == "override"


@pytest.mark.slow
def test_sigkill_mid_batch_then_rerun(tmp_path: Path, good_slide: Path) -> None:
    """A real `pathfl tile` process (2 workers) is killed with SIGKILL while slides are being
    written; every file left is complete and the rerun finishes the rest."""
    src = tmp_path / "slides"
    src.mkdir()
    n = 8
    for i in range(n):
        shutil.copy(good_slide, src / f"s{i}.tif")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pathfl", "-q", "tile", str(src), "--out", str(out), "-j", "2"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if (out / "manifest.csv").exists() and len(manifest(out)) >= 2:
                break
            if proc.poll() is not None:
                pytest.fail("tile finished before it could be killed")
            time.sleep(0.05)
        else:
            pytest.fail("no slide finished within 90 s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    done_before = {sid for sid, r in manifest(out).items() if r["status"] == "ok"}
    assert 0 < len(done_before) < n
    # every coords file present is complete and readable
    for h5 in (out / "coords").glob("*.h5"):
        with h5py.File(h5, "r") as f:
            assert len(f["coords"]) > 0 and len(f.attrs["fingerprint"]) == 64

    code, output = tile(src, "--out", out, "-j", "1")
    assert code == 0, output
    rows = manifest(out)
    assert len(rows) == n and all(r["status"] in ("ok", "skipped") for r in rows.values())
    assert {sid for sid, r in rows.items() if r["status"] == "skipped"} >= done_before
    assert len(list((out / "coords").glob("*.h5"))) == n
    assert no_temp_files(out)


def test_slide_lists_folders_and_csv_errors(tmp_path: Path, good_slide: Path) -> None:
    from pathfl.config import ConfigError
    from pathfl.tiling.inputs import collect_jobs, read_slides_csv

    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    shutil.copy(good_slide, nested / "deep.tif")
    (nested / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="no slide files"):
        collect_jobs([tmp_path / "a"])
    jobs = collect_jobs([tmp_path / "a"], recursive=True, mpp_override=0.5)
    assert [(j.slide_id, j.mpp_override) for j in jobs] == [("deep", 0.5)]
    assert jobs[0].path.is_absolute()
    with pytest.raises(ConfigError, match="duplicate slide id"):
        collect_jobs([nested / "deep.tif", nested / "deep.tif"])

    # DICOM: each folder of .dcm files is one slide, named after the folder, opened by its
    # largest file (the full-resolution level)
    pytest.importorskip("pydicom")
    from slides import write_dicom_wsi

    rgb = synthetic_tissue(512, 512, seed=9)
    for case in ("case1", "case2"):
        write_dicom_wsi(tmp_path / "dicom" / case, rgb, mpp=0.5, levels=2)
    jobs = collect_jobs([tmp_path / "dicom"], recursive=True)
    assert [(j.slide_id, j.path.name) for j in jobs] == [
        ("case1", "level0.dcm"),
        ("case2", "level0.dcm"),
    ]
    code, _ = tile(tmp_path / "dicom" / "case1" / "level1.dcm", "--out", tmp_path / "dcm_out")
    assert code == 0 and manifest(tmp_path / "dcm_out")["case1"]["status"] == "ok"
    assert len(read_coords(tmp_path / "dcm_out" / "coords" / "case1.h5")[0]) > 0

    bad = tmp_path / "bad.csv"
    bad.write_text("id,file\nx,y.svs\n")
    with pytest.raises(ConfigError, match="missing column"):
        read_slides_csv(bad)
    bad.write_text("slide_id,path,mpp\nx,y.svs,-1\n")
    with pytest.raises(ConfigError, match="mpp must be > 0"):
        read_slides_csv(bad)
    assert tile("--slides-csv", bad, "--out", tmp_path / "o")[0] == 2

    # a CSV row whose file is missing is one failed slide, not a stopped batch
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(f"slide_id,path\nok1,{good_slide}\ngone,missing.svs\n")
    out = tmp_path / "out"
    assert tile("--slides-csv", sheet, "--out", out)[0] == 1
    rows = manifest(out)
    assert rows["ok1"]["status"] == "ok"
    assert rows["gone"]["status"] == "failed" and "no such file" in rows["gone"]["error"]


def crash_on_slide_named_crash(job, out_dir, config):  # runs in spawned worker processes
    from pathfl.tiling import tile_slide

    if job.slide_id == "crash":
        os._exit(3)  # what a segfault inside a native reader looks like to the pool
    return tile_slide(job, out_dir, config)


@pytest.mark.slow
def test_worker_crash_fails_only_that_slide(tmp_path: Path, good_slide: Path) -> None:
    from pathfl.tiling import SlideJob, TileConfig, run_batch

    jobs = [SlideJob(sid, good_slide) for sid in ("a", "crash", "b", "c")]
    results = run_batch(jobs, tmp_path, TileConfig(), workers=2, worker=crash_on_slide_named_crash)
    status = {r.slide_id: r.status for r in results}
    assert status == {"a": "ok", "crash": "failed", "b": "ok", "c": "ok"}
    rows = manifest(tmp_path)
    assert "crashed" in rows["crash"]["error"]
    assert sorted(p.stem for p in (tmp_path / "coords").glob("*.h5")) == ["a", "b", "c"]
