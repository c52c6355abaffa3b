"""Help, docs and configs say what the code does: -v/-q are counted flags with the same
meaning everywhere, a typo gets one suggestion, shell completion exists, `demo --help` states
the real tiny cohort, the shipped fl.yaml states the library defaults, the docs name no file
that is not in the repository; progress lines of train and fl; manifests' absolute paths."""

from __future__ import annotations

import json
import logging
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pathfl.cli import app

ROOT = Path(__file__).resolve().parents[1]
RUNNER = CliRunner()


def _out(*args: str) -> str:
    r = RUNNER.invoke(app, list(args))
    return " ".join(r.output.split())


def test_verbose_is_a_counted_flag_and_completion_exists() -> None:
    text = RUNNER.invoke(app, ["--help"]).output
    line = next(x for x in text.splitlines() if "--verbose" in x)
    assert "INTEGER" not in line and "[default" not in line
    assert "-vv debug" in " ".join(text.split())
    assert "--install-completion" in text and "--show-completion" in text


@pytest.mark.parametrize(
    ("args", "suggestion"),
    [
        (["tilee"], "'tile'"),
        (["fl", "simulat"], "'simulate'"),
        (["fl", "audit", "verif"], "'verify'"),
    ],
)
def test_a_typo_is_suggested_once(args: list[str], suggestion: str) -> None:
    out = _out(*args)
    assert out.count("Did you mean") == 1 and suggestion in out, out


def test_demo_help_states_the_real_tiny_cohort() -> None:
    from pathfl.demo.cohort import demo_spec

    spec = demo_spec(tiny=True)
    sizes = {s.n_patients for s in spec.sites}
    assert len(sizes) == 1
    assert f"{len(spec.sites)} sites × {sizes.pop()} patients" in _out("demo", "--help")


def test_shipped_fl_config_states_the_library_defaults() -> None:
    from pathfl.config import load_yaml
    from pathfl.fl.fl_config import FL_DEFAULTS
    from pathfl.survival.config import default

    shipped = load_yaml(ROOT / "configs" / "fl.yaml")
    assert shipped["rounds"] == FL_DEFAULTS["rounds"]
    for key, value in shipped.items():
        expected = FL_DEFAULTS[key] if key in FL_DEFAULTS else default(key)
        assert value == expected, (
            f"configs/fl.yaml {key}: {value!r} but the default is {expected!r}"
        )


def test_docs_name_no_missing_file_and_no_outside_path() -> None:
    texts = {p: p.read_text() for p in [*(ROOT / "docs").glob("*.md"), ROOT / "Makefile"]}
    for path, text in texts.items():
        assert "DESIGN" not in text, f"{path.name} refers to DESIGN.md (not in the repository)"
        assert "../shared/" not in text, f"{path.name} uses a path outside the repository"
        for target in re.findall(r"\]\(([^)#\s]+\.md)\)", text):
            assert (path.parent / target).is_file(), f"{path.name} links to missing {target}"
    assert (ROOT / "docs" / "file-formats.md").is_file()


def test_markdown_code_fences_are_closed() -> None:
    """A stray fence turns the rest of a page into one code block (docs/train.md had one)."""
    pages = [ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "data" / "README.md"]
    for page in [*pages, *(ROOT / "docs").glob("*.md")]:
        fences = [i + 1 for i, line in enumerate(page.read_text().splitlines())
                  if line.lstrip().startswith("```")]  # fmt: skip
        assert len(fences) % 2 == 0, f"{page.name}: unclosed code fence (fence lines {fences})"


def test_verbosity_levels_keep_third_party_loggers_quiet() -> None:
    from pathfl.cli import verbosity

    try:
        for level, own, root in [(-1, "WARNING", "WARNING"), (0, "WARNING", "WARNING"),
                                 (1, "INFO", "WARNING"), (2, "DEBUG", "WARNING"),
                                 (3, "DEBUG", "DEBUG")]:  # fmt: skip
            v = verbosity.configure(verbose=max(level, 0), quiet=level < 0)
            assert v.level == level and v.progress == (level >= 0)
            assert (
                logging.getLevelName(logging.getLogger("pathfl.tiling").getEffectiveLevel()) == own
            )
            for lib in ("h5py", "zarr", "matplotlib", "PIL"):
                assert logging.getLevelName(logging.getLogger(lib).getEffectiveLevel()) == root
    finally:
        verbosity.configure(verbose=0, quiet=False)


def _tile(cmu_slide: Path, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pathfl", *flags, "tile", str(cmu_slide), "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)


def test_tile_v_lists_each_slide_and_vv_adds_no_library_debug(cmu_slide, tmp_path) -> None:
    """-vv: the per-slide line of -v, pathfl's DEBUG lines, and no library's DEBUG line."""
    vv = _tile(cmu_slide, tmp_path / "b", "-vv")
    assert vv.returncode == 0, vv.stderr
    assert re.search(r"ok +CMU-1-Small-Region: \d+ tiles at 0\.499 µm/px", vv.stderr), vv.stderr
    debug = [x for x in vv.stderr.splitlines() if "DEBUG" in x]
    assert debug and all("pathfl." in x for x in debug), debug


def test_manifest_paths_are_absolute(tmp_path, monkeypatch) -> None:
    from pathfl.io import Manifest, ManifestRow

    monkeypatch.chdir(tmp_path)
    m = Manifest(tmp_path / "manifest.csv")
    m.update(ManifestRow("s1", "features/s1.h5", "ok", n_tiles=3))
    (row,) = Manifest.load(tmp_path / "manifest.csv").rows.values()
    assert row["path"] == str(tmp_path / "features" / "s1.h5")
    # an old manifest with a relative path still loads, row as written
    (tmp_path / "old.csv").write_text(
        "slide_id,path,status,n_tiles,mpp,seconds,error\ns0,features/s0.h5,ok,2,0.5,1.0,\n"
    )
    assert Manifest.load(tmp_path / "old.csv").rows["s0"]["path"] == "features/s0.h5"


def test_round_lines_from_a_run_dir(tmp_path) -> None:
    from pathfl.fl.round_watch import RoundInfo, RoundWatcher
    from pathfl.fl.rundir import RunDir

    rd = RunDir(tmp_path)
    rd.config.write_text(json.dumps({"config": {"rounds": 3}}))
    seen: list[RoundInfo] = []
    watch = RoundWatcher(tmp_path, seen.append)
    watch.poll()
    assert seen == []
    site = {"status": "aggregated"}
    rd.append_round({"round": 1, "seconds": 6.25, "sites": {"a": site, "b": site}})
    rd.append_round(
        {"round": 2, "seconds": 4.0, "sites": {"a": site}, "missing": ["b"],
         "federated_c_index_prev_global": 0.7333}
    )  # fmt: skip
    watch.poll()
    watch.poll()  # nothing new: nothing reported twice
    assert [s.round for s in seen] == [1, 2]
    assert math.isnan(seen[0].federated_c)
    assert seen[0].line() == (
        "round 1/3: 2/2 sites answered in 6.2 s; federated C — (model entering the round)"
    )
    assert seen[1].line() == (
        "round 2/3: 1/2 sites answered in 4.0 s; federated C 0.733 (model entering the round); "
        "b: no reply"
    )
