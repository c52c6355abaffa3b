"""Federation trust: compatibility fingerprints, hash-chained audit log, site policy and update
validation (pure modules, real HDF5 and real files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pathfl.config import ConfigError
from pathfl.fl.trust.audit import AuditLog, code_hash, hash_arrays, head_path, verify
from pathfl.fl.trust.compat import CompatibilityError, check_compatibility, site_fingerprint
from pathfl.fl.trust.policy import SitePolicy
from pathfl.fl.trust.validation import reference_from_arrays, validate_updates
from pathfl.formats.features_h5 import write_features

ATTRS = {
    "encoder": "mobilenetv2",
    "weights_sha256": "ab" * 32,
    "target_mpp": 0.5,
    "tile_size": 224,
    "pathfl_version": "0.1.0",
}


def _write_features(path: Path, *, dim: int = 8, n: int = 5, **overrides) -> None:
    attrs = {**ATTRS, "feature_dim": dim, **overrides}
    feats = np.random.default_rng(0).random((n, dim), np.float32)
    write_features(path, feats, np.zeros((n, 2), np.int64), attrs)


def _site(tmp_path: Path, name: str, n_slides: int = 2, **overrides) -> Path:
    d = tmp_path / name / "features"
    d.mkdir(parents=True)
    for i in range(n_slides):
        _write_features(d / f"{name}_s{i}.h5", **overrides)
    return d


# --- compatibility -----------------------------------------------------------------------


def test_fingerprint_read_from_h5_and_compatible_sites_pass(tmp_path):
    recs = {s: site_fingerprint(_site(tmp_path, s)) for s in ("a", "b", "c")}
    assert recs["a"]["encoder"] == "mobilenetv2" and recs["a"]["feature_dim"] == 8
    assert recs["a"]["n_files"] == 2
    res = check_compatibility(recs)
    assert res.ok and res.accepted == ["a", "b", "c"] and not res.messages


def test_sites_with_another_stain_reference_are_refused(tmp_path):
    """Stain normalisation: the method and the reference's SHA-256 must be the same at every
    site; files written before the option existed count as no normalisation."""
    ref = {"stain_norm": "macenko", "stain_ref_sha256": "cd" * 32}
    recs = {
        "a": site_fingerprint(_site(tmp_path, "a", **ref)),
        "b": site_fingerprint(_site(tmp_path, "b", **ref)),
        "c": site_fingerprint(_site(tmp_path, "c", **{**ref, "stain_ref_sha256": "ef" * 32})),
        "d": site_fingerprint(_site(tmp_path, "d")),  # no stain attrs at all
    }
    assert recs["d"]["stain_norm"] == "none" and recs["d"]["stain_ref_sha256"] == ""
    res = check_compatibility(recs, policy="refuse")
    assert not res.ok and res.accepted == []
    text = "; ".join(res.messages)
    assert "site 'c': stain_ref_sha256='" + "ef" * 32 in text and "same --stain-ref" in text
    assert "site 'd': stain_norm='none' but 'macenko' at site(s) a, b, c" in text
    res = check_compatibility(recs, policy="exclude", min_sites=2)
    assert res.ok and res.accepted == ["a", "b"] and sorted(res.excluded) == ["c", "d"]
    # old files and files written with --stain-norm none agree
    old = site_fingerprint(_site(tmp_path, "e"))
    new = site_fingerprint(_site(tmp_path, "f", stain_norm="none", stain_ref_sha256=""))
    assert check_compatibility({"e": old, "f": new}).ok


def test_mismatched_fingerprint_refused_naming_site_and_field(tmp_path):
    recs = {
        "a": site_fingerprint(_site(tmp_path, "a")),
        "b": site_fingerprint(_site(tmp_path, "b", encoder="resnet50-trunc")),
        "c": site_fingerprint(_site(tmp_path, "c")),
    }
    res = check_compatibility(recs, policy="refuse")
    assert not res.ok and res.accepted == []
    assert any("'b'" in m and "encoder" in m and "resnet50-trunc" in m for m in res.messages)
    with pytest.raises(CompatibilityError, match="encoder"):
        res.raise_for_status()
    # exclude policy: the odd site is left out, the others go on
    res = check_compatibility(recs, policy="exclude", min_sites=2)
    assert res.ok and res.accepted == ["a", "c"] and list(res.excluded) == ["b"]
    assert not check_compatibility(recs, policy="exclude", min_sites=3).ok


def test_mpp_tolerance_and_tile_size_difference(tmp_path):
    recs = {
        "a": site_fingerprint(_site(tmp_path, "a")),
        "b": site_fingerprint(_site(tmp_path, "b", target_mpp=0.50001)),
        "c": site_fingerprint(_site(tmp_path, "c", tile_size=256)),
    }
    res = check_compatibility(recs)
    assert [m for m in res.messages if "'b'" in m] == []
    assert any("'c'" in m and "tile_size" in m for m in res.messages)


def test_site_whose_own_files_disagree_is_an_error(tmp_path):
    d = _site(tmp_path, "a")
    _write_features(d / "odd.h5", dim=16)
    with pytest.raises(CompatibilityError, match=r"odd\.h5.*feature_dim"):
        site_fingerprint(d)
    with pytest.raises(CompatibilityError, match="no features files"):
        site_fingerprint(tmp_path)


def test_missing_field_is_refused():
    rec = {**ATTRS, "feature_dim": 8}
    res = check_compatibility({"a": rec, "b": {k: v for k, v in rec.items() if k != "encoder"}})
    assert not res.ok
    assert any("'b'" in m and "encoder" in m and "missing" in m for m in res.messages)


# --- audit log ---------------------------------------------------------------------------


def _three_rounds(path: Path, key: bytes | None = None) -> AuditLog:
    log = AuditLog(path, run_id="run-1", key=key)
    log.append("start", sites=["a", "b", "c"])
    for r in (1, 2):
        log.append(
            "round",
            round=r,
            sites=["a", "b", "c"],
            model_in_sha256=hash_arrays([np.full(3, r, np.float32)]),
            model_out_sha256=hash_arrays([np.full(3, r + 1, np.float32)]),
            n_examples=np.int64(30),
            metrics={"c_index": np.float32(0.6), "loss": float("nan")},
        )
    return log


def test_audit_chain_verifies(tmp_path):
    p = tmp_path / "audit.jsonl"
    log = _three_rounds(p)
    rep = verify(p)
    assert rep.ok, rep.errors
    assert rep.n_entries == 3 and rep.head_count == 3
    entries = log.entries()
    assert [e["seq"] for e in entries] == [0, 1, 2]
    assert entries[1]["prev_hash"] == entries[0]["entry_hash"]
    assert entries[1]["code_hash"] == code_hash() and len(code_hash()) == 64
    assert entries[1]["run_id"] == "run-1" and entries[1]["n_examples"] == 30


def test_audit_detects_an_edit(tmp_path):
    p = tmp_path / "audit.jsonl"
    _three_rounds(p)
    lines = p.read_text().splitlines(keepends=True)
    e = json.loads(lines[1])
    e["n_examples"] = 3000
    lines[1] = json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n"
    p.write_text("".join(lines))
    rep = verify(p)
    assert not rep.ok
    assert any("line 2" in err and "edited" in err for err in rep.errors)


def test_audit_detects_deletion_in_the_middle(tmp_path):
    p = tmp_path / "audit.jsonl"
    _three_rounds(p)
    lines = p.read_text().splitlines(keepends=True)
    p.write_text(lines[0] + lines[2])
    rep = verify(p)
    assert not rep.ok and any("prev_hash" in err for err in rep.errors)


def test_audit_detects_truncation_of_last_entries(tmp_path):
    p = tmp_path / "audit.jsonl"
    _three_rounds(p)
    lines = p.read_text().splitlines(keepends=True)
    p.write_text("".join(lines[:2]))  # chain of the first two is still intact
    rep = verify(p)
    assert not rep.ok and any("truncated" in err for err in rep.errors)
    # torn last line (partial write)
    p.write_text("".join(lines[:2]) + lines[2][:40])
    assert any("torn" in err for err in verify(p).errors)
    # deleting the head file hides truncation, so it is an error by default
    head_path(p).unlink()
    p.write_text("".join(lines[:2]))
    assert not verify(p).ok
    assert verify(p, require_head=False).ok


def test_keyed_audit_log_needs_the_key(tmp_path):
    p = tmp_path / "audit.jsonl"
    _three_rounds(p, key=b"site-secret")
    assert verify(p, key=b"site-secret").ok
    assert not verify(p, key=b"wrong").ok


def test_audit_verify_cli(tmp_path):
    import typer

    from pathfl.cli.audit import register_audit

    app = typer.Typer()
    register_audit(app)

    @app.callback()
    def _root() -> None:  # make "audit" a sub-command, as under `pathfl fl`
        pass

    p = tmp_path / "audit.jsonl"
    _three_rounds(p)
    runner = CliRunner()
    r = runner.invoke(app, ["audit", "verify", str(p)])
    assert r.exit_code == 0, r.output
    assert "OK" in r.output
    r = runner.invoke(app, ["audit", "show", str(p)])
    assert r.exit_code == 0 and "round" in r.output
    p.write_text(p.read_text().replace('"round":2', '"round":9'))
    r = runner.invoke(app, ["audit", "verify", str(p)])
    assert r.exit_code == 1 and "TAMPERED" in r.output
    assert runner.invoke(app, ["audit", "verify", str(tmp_path / "nope")]).exit_code == 2


def test_hash_arrays_sensitive_to_values_shape_dtype():
    a = [np.arange(6, dtype=np.float32)]
    assert hash_arrays(a) == hash_arrays([np.arange(6, dtype=np.float32)])
    assert hash_arrays(a) != hash_arrays([np.arange(6, dtype=np.float32).reshape(2, 3)])
    assert hash_arrays(a) != hash_arrays([np.arange(6, dtype=np.float64)])
    b = [np.arange(6, dtype=np.float32)]
    b[0][3] += 1e-6
    assert hash_arrays(a) != hash_arrays(b)


# --- policy --------------------------------------------------------------------------------


def test_policy_refusal(tmp_path):
    p = tmp_path / "policy.yaml"
    p.write_text(
        "allowed_models: [abmil]\nmax_rounds: 5\nmax_local_epochs: 2\nrequire_dp: true\n"
        "max_epsilon: 8\nallowed_config_keys: [model, num_rounds, local_epochs, dp, dp_epsilon]\n"
    )
    pol = SitePolicy.load(p)
    ok = {"model": "abmil", "num_rounds": 3, "local_epochs": 1, "dp": True, "dp_epsilon": 4.0}
    assert pol.check(ok) == []
    bad = {"model": "transmil", "num_rounds": 50, "local_epochs": 9, "dp": False, "lr": 1.0}
    v = pol.check(bad)
    text = " | ".join(v)
    for needle in ("transmil", "max_rounds=5", "max_local_epochs=2", "differential privacy", "lr"):
        assert needle in text, text
    assert any("max_epsilon" in m for m in pol.check({**ok, "dp_epsilon": 20}))
    # governed keys never trip allowed_config_keys; other keys must be listed
    narrow = SitePolicy.from_dict({"allowed_config_keys": ["lr"]})
    assert narrow.check({"model": "abmil", "rounds": 2, "dp": False, "lr": 0.1}) == []
    assert "seed" in narrow.check({"model": "abmil", "seed": 3})[0]


def test_policy_file_errors(tmp_path):
    p = tmp_path / "policy.yaml"
    p.write_text("max_round: 5\n")
    with pytest.raises(ConfigError, match="max_round"):
        SitePolicy.load(p)
    with pytest.raises(ConfigError, match="not found"):
        SitePolicy.load(tmp_path / "missing.yaml")
    assert SitePolicy().check({"model": "anything", "num_rounds": 10**6}) == []


# --- update validation ---------------------------------------------------------------------


def _replies(rng: np.random.Generator, n: int = 5) -> list[list[np.ndarray]]:
    return [
        [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)]
        for _ in range(n)
    ]


def test_nan_update_rejected():
    rng = np.random.default_rng(0)
    reps = _replies(rng)
    ref = reference_from_arrays(reps[0])
    reps[2][0][1, 1] = np.nan
    reps[3][1][0] = np.inf
    res = validate_updates(reps, reference_shapes_dtypes=ref, labels=list("abcde"))
    assert res.accepted == [0, 1, 4]
    assert "NaN" in res.reasons(2)[0] and "1 Inf" in res.reasons(3)[0]


def test_wrong_shape_dtype_and_count_rejected():
    rng = np.random.default_rng(1)
    reps = _replies(rng, 4)
    ref = reference_from_arrays(reps[0])
    reps[1] = [reps[1][0][:2], reps[1][1]]
    reps[2] = [reps[2][0].astype(np.float64), reps[2][1]]
    reps[3] = reps[3][:1]
    res = validate_updates(reps, reference_shapes_dtypes=ref, num_examples=[10, 10, 10, 10])
    assert res.accepted == [0]
    assert "shape" in res.reasons(1)[0] and "dtype" in res.reasons(2)[0]
    assert "arrays" in res.reasons(3)[0]
    res = validate_updates(reps[:1], reference_shapes_dtypes=ref, num_examples=[0])
    assert res.accepted == [] and "num_examples" in res.reasons(0)[0]


def test_norm_outlier_rejected_relative_to_global():
    rng = np.random.default_rng(2)
    glob = _replies(rng, 1)[0]
    noise = [[0.01 * rng.normal(size=g.shape).astype(np.float32) for g in glob] for _ in range(4)]
    reps = [[g + e for g, e in zip(glob, eps, strict=True)] for eps in noise]
    reps.append([g + 100.0 for g in glob])  # a poisoned/scaled update
    ref = reference_from_arrays(glob)
    res = validate_updates(reps, reference_shapes_dtypes=ref, global_arrays=glob)
    assert res.accepted == [0, 1, 2, 3] and "robust SDs" in res.reasons(4)[0]
    # switched off → accepted; ratio test alone still catches it
    assert validate_updates(
        reps, reference_shapes_dtypes=ref, global_arrays=glob, norm_factor=None
    ).accepted == [0, 1, 2, 3, 4]
    res = validate_updates(
        reps, reference_shapes_dtypes=ref, global_arrays=glob, norm_factor=None, max_norm_ratio=10
    )
    assert res.accepted == [0, 1, 2, 3]
    # too few replies for an outlier test: nothing rejected on norm alone
    assert validate_updates(reps[3:], reference_shapes_dtypes=ref, global_arrays=glob).accepted == [
        0,
        1,
    ]


def test_field_missing_everywhere_is_a_warning_not_a_refusal(tmp_path):
    rec = {**ATTRS, "feature_dim": 8}
    del rec["pathfl_version"]
    res = check_compatibility({"a": rec, "b": dict(rec)})
    assert res.ok and any("pathfl_version" in w for w in res.warnings)
    res = check_compatibility({"a": rec, "b": {**rec, "pathfl_version": "0.1.0"}})
    assert not res.ok and any("pathfl_version" in m for m in res.messages)


def test_larger_site_with_larger_update_is_not_rejected():
    """Three sites, two alike and one with ~2.5x the patients (so ~2.5x the update norm): the
    tiny MAD of three replies must not get the large site rejected; a 20x update still is."""
    glob = [np.zeros((4, 3), np.float32)]
    ref = reference_from_arrays(glob)
    reps = [[np.full((4, 3), v, np.float32)] for v in (1.0, 1.01, 2.5)]
    res = validate_updates(reps, reference_shapes_dtypes=ref, global_arrays=glob)
    assert res.accepted == [0, 1, 2]
    reps[2] = [np.full((4, 3), 20.0, np.float32)]
    res = validate_updates(reps, reference_shapes_dtypes=ref, global_arrays=glob)
    assert res.accepted == [0, 1]


def test_cross_check_server_against_site_logs(tmp_path):
    from pathfl.fl.trust.audit import cross_check

    g0, g1 = [np.zeros(3, np.float32)], [np.ones(3, np.float32)]
    ua, ub = [np.full(3, 2.0, np.float32)], [np.full(3, 3.0, np.float32)]
    server = AuditLog(tmp_path / "server.jsonl", run_id="r1")
    site_a = AuditLog(tmp_path / "a.jsonl", run_id="r1")
    site_b = AuditLog(tmp_path / "b.jsonl", run_id="r1")
    AuditLog(tmp_path / "a.jsonl", run_id="older-run").append("train", round=1)
    site_a.append("train", round=1, model_in_sha256=hash_arrays(g0), update_sha256=hash_arrays(ua))
    site_b.append("train", round=1, model_in_sha256=hash_arrays(g0), update_sha256=hash_arrays(ub))
    server.append(
        "round",
        round=1,
        sites=["a", "b"],
        model_in_sha256=hash_arrays(g0),
        model_out_sha256=hash_arrays(g1),
        updates={"a": hash_arrays(ua), "b": hash_arrays(ub)},
    )
    logs = {"a": tmp_path / "a.jsonl", "b": tmp_path / "b.jsonl"}
    assert cross_check(tmp_path / "server.jsonl", logs) == []
    # the server claims to have aggregated a different update from b, and a round-2 update
    # from a that a never sent
    server.append(
        "round",
        round=2,
        sites=["a", "b"],
        model_in_sha256=hash_arrays(g1),
        updates={"b": hash_arrays(ua)},
    )
    site_b.append("train", round=2, model_in_sha256=hash_arrays(g1), update_sha256=hash_arrays(ub))
    problems = cross_check(tmp_path / "server.jsonl", logs)
    assert any("round 2" in p and "'a'" in p and "no train entry" in p for p in problems)
    assert any("round 2" in p and "'b'" in p and "differs" in p for p in problems)
    # a site that received another model than the server logged sending
    site_c = AuditLog(tmp_path / "c.jsonl", run_id="r1")
    site_c.append("train", round=1, model_in_sha256=hash_arrays(g1))
    server2 = AuditLog(tmp_path / "s2.jsonl", run_id="r1")
    server2.append("round", round=1, sites=["c"], model_in_sha256=hash_arrays(g0))
    problems = cross_check(tmp_path / "s2.jsonl", {"c": tmp_path / "c.jsonl"})
    assert len(problems) == 1 and "different global model" in problems[0]
