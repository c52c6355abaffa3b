"""`pathfl fl` command line: key material, and usage errors exit with code 2 before anything
is started."""

from __future__ import annotations

import subprocess
import sys

from cryptography import x509
from cryptography.hazmat.primitives import serialization


def _pathfl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pathfl", *args], capture_output=True, text=True, timeout=120
    )


def _config_error(*args: str) -> str:
    """Run in-process; return the message of the ConfigError (= exit code 2 via main())."""
    from typer.testing import CliRunner

    from pathfl.cli import app
    from pathfl.config import ConfigError

    result = CliRunner().invoke(app, list(args))
    assert isinstance(result.exception, ConfigError), (result.exception, result.output)
    return str(result.exception)


def test_certs_creates_ca_server_cert_and_site_keys(tmp_path) -> None:
    out = tmp_path / "certs"
    res = _pathfl("fl", "certs", "--out", str(out), "--sites", "a,b", "--hosts", "fl.example.org")
    assert res.returncode == 0, res.stderr
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((out / "server.crt").read_bytes())
    assert server.issuer == ca.subject
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "fl.example.org" in sans.get_values_for_type(x509.DNSName)
    for site in ("a", "b"):
        key = serialization.load_ssh_private_key((out / "sites" / f"{site}.key").read_bytes(), None)
        pub = serialization.load_ssh_public_key((out / "sites" / f"{site}.pub").read_bytes())
        assert key.public_key().public_numbers() == pub.public_numbers()
        assert (out / "sites" / f"{site}.key").stat().st_mode & 0o077 == 0  # private
    # adding a site later keeps the CA
    before = (out / "ca.crt").read_bytes()
    assert _pathfl("fl", "certs", "--out", str(out), "--sites", "c").returncode == 0
    assert (out / "ca.crt").read_bytes() == before and (out / "sites" / "c.key").exists()


def test_usage_errors_exit_2(tmp_path) -> None:
    bad_site = tmp_path / "not_a_site"
    bad_site.mkdir()
    msg = _config_error(
        "fl",
        "simulate",
        "--site",
        str(bad_site),
        "--site",
        str(bad_site),
        "--out",
        str(tmp_path / "o"),
    )
    assert "features/ and clinical.csv" in msg
    nll = tmp_path / "nll.yaml"
    nll.write_text("loss: nll\n")  # the discrete-time loss needs its bins fixed up front
    msg = _config_error(
        "fl", "run", "--server", "127.0.0.1:1", "--config", str(nll), "--out", str(tmp_path / "r")
    )
    assert "time-bin cut points" in msg
    good = tmp_path / "good.yaml"
    good.write_text("time_grid_max: 10.0\n")
    msg = _config_error(
        "fl", "run", "--server", "127.0.0.1:1", "--config", str(good), "--out", str(tmp_path / "r")
    )
    assert "root-cert" in msg
    cfg = tmp_path / "fl.yaml"
    cfg.write_text("roundz: 3\n")
    # the real exit code, through the console entry point
    res = _pathfl(
        "fl",
        "run",
        "--server",
        "127.0.0.1:1",
        "--insecure",
        "--config",
        str(cfg),
        "--out",
        str(tmp_path / "r"),
    )
    assert res.returncode == 2 and "roundz" in res.stderr
    assert "invalid site name" in _config_error(
        "fl", "certs", "--out", str(tmp_path / "c"), "--sites", "bad name"
    )
