"""The deployment commands of docs/federation.md ("Real deployment"), each a separate `pathfl`
process on 127.0.0.1, as an aggregator's and three hospitals' IT would start them: `fl certs`,
`fl server`, three `fl site`, then the researcher's `fl run`, `fl audit verify`/`cross-check`
and `predict` on the federated run dir. SIGTERM stops each long-running command together with
everything it started."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SITES = ("hosp_a", "hosp_b", "hosp_c")
# one round: this test is about the commands; several rounds through real processes are
# tests/test_fl_e2e.py (3) and tests/test_fl_faults.py (2)
RUN_CONFIG = """\
rounds: 1
local_epochs: 1
model: meanpool
loss: cox
linear_cox: false
hidden_dim: 8
min_sites: 3
num_sites: 3
val_folds: 3
round_timeout_s: 240
connect_timeout_s: 180
seed: 3
"""


def _pathfl(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pathfl", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
    )


def _start(log: Path, *args: object) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pathfl", *map(str, args)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
        )


def _wait_for(log: Path, pattern: str, proc: subprocess.Popen, timeout_s: float = 120) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        m = re.search(pattern, text)
        if m:
            return m.group(1)
        assert proc.poll() is None, f"{log.name} exited early:\n{text[-3000:]}"
        time.sleep(0.3)
    raise AssertionError(f"{pattern!r} not in {log} after {timeout_s} s:\n{text[-3000:]}")


@pytest.fixture(scope="module")
def site_dirs(tmp_path_factory) -> list[Path]:
    from pathfl.survival.synthetic import make_cohort, split_into_sites

    root = tmp_path_factory.mktemp("deploy_sites")
    cohort = make_cohort(root / "all", n_patients=48, feature_dim=6, tiles=(4, 8), seed=3)
    return split_into_sites(cohort, root, list(SITES))


def test_documented_deployment_commands(site_dirs, tmp_path) -> None:
    from typer.testing import CliRunner

    from pathfl.cli import app
    from pathfl.fl.flower.processes import free_port, group_running

    certs = tmp_path / "fl_certs"
    res = _pathfl("fl", "certs", "--out", certs, "--sites", ",".join(SITES), "--hosts", "127.0.0.1")
    assert res.returncode == 0, res.stderr
    port = free_port()
    server = f"127.0.0.1:{port}"
    started: list[tuple[subprocess.Popen, Path]] = []
    children: list[int] = []  # SuperLink / SuperNode pids (= process groups) reported
    try:
        log = tmp_path / "server.out"
        proc = _start(
            log, "fl", "server", "--certs", certs, "--host", "127.0.0.1", "--port", port,
            "--state-dir", tmp_path / "server",
        )  # fmt: skip
        started.append((proc, log))
        children.append(int(_wait_for(log, r"SuperLink listening on \S+ \(pid (\d+)\)", proc)))
        assert all(f"registered site {s}" in log.read_text() for s in SITES)
        for name, d in zip(SITES, site_dirs, strict=True):
            log = tmp_path / f"{name}.out"
            proc = _start(
                log, "fl", "site", "--name", name, "--server", server,
                "--root-cert", certs / "ca.crt", "--key", certs / "sites" / f"{name}.key",
                "--features", d / "features", "--clinical", d / "clinical.csv",
                "--audit-log", tmp_path / f"{name}_audit.jsonl",
                "--state-dir", tmp_path / f"state_{name}",
            )  # fmt: skip
            started.append((proc, log))
            children.append(int(_wait_for(log, r"connecting to \S+ \(pid (\d+)\)", proc)))

        config = tmp_path / "fl.yaml"
        config.write_text(RUN_CONFIG)
        run_dir = tmp_path / "run1"
        res = _pathfl(
            "fl", "run", "--server", server, "--root-cert", certs / "ca.crt",
            "--config", config, "--out", run_dir, timeout=800,
        )  # fmt: skip
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert '"state": "completed"' in res.stdout
        assert (run_dir / "model.pt").is_file() and (run_dir / "config.json").is_file()
        # progress: one line per round on stderr; the run's report.html
        assert re.findall(r"round (\d)/\d: \d/\d sites answered", res.stderr), res.stderr[-2000:]
        assert "report: " in res.stdout and "report.html" in res.stdout
        assert "sites aggregated" in (run_dir / "report.html").read_text()

        site_logs = [tmp_path / f"{name}_audit.jsonl" for name in SITES]
        res = _pathfl("fl", "audit", "verify", run_dir / "audit.jsonl")
        assert res.returncode == 0, (res.stdout, res.stderr)
        for audit_log in site_logs:  # the same command in-process (one interpreter start each
            # less; the console entry point's exit code is checked just above)
            res = CliRunner().invoke(app, ["fl", "audit", "verify", str(audit_log)])
            assert res.exit_code == 0, (audit_log, res.output)
        pairs = [f"{name}={log}" for name, log in zip(SITES, site_logs, strict=True)]
        res = _pathfl("fl", "audit", "cross-check", run_dir / "audit.jsonl", *pairs)
        assert res.returncode == 0, res.stdout + res.stderr

        # the federated run dir is a model like any other
        risks = tmp_path / "risks.csv"
        res = _pathfl(
            "predict", "--run", run_dir, "--features", site_dirs[0] / "features",
            "--clinical", site_dirs[0] / "clinical.csv", "--out", risks,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        with open(site_dirs[0] / "clinical.csv", newline="") as f:
            patients = {row["patient_id"] for row in csv.DictReader(f)}
        with open(risks, newline="") as f:
            rows = list(csv.DictReader(f))
        assert {r["patient_id"] for r in rows} == patients and len(rows) == len(patients)
    finally:
        for proc, _log in started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=60) for proc, _log in started]
    # SIGTERM is the documented way to stop a server or a site: a clean exit that takes the
    # SuperLink / SuperNode it started down with it
    assert codes == [0] * len(started), [(log.name, log.read_text()[-2000:]) for _, log in started]
    deadline = time.monotonic() + 10
    while any(group_running(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(group_running(pid) for pid in children)
