"""nsa_app.results on the fixture runs: pagination equals a full sort, histograms count every neuron, corrupt or
missing artifacts become ArtifactError, paths typed into the app stay inside the allowed folders."""
from __future__ import annotations

import pytest

from nsa.errors import NSAError
from nsa_app import results
from nsa_app.ui import check_local_path


def test_page_of_matches_full_sort(run_ids):
    df = results.neurons(run_ids[0])
    full = df.sort_values("frac_out", ascending=False, kind="stable")
    for page in (0, 2):
        rows, n_pages = results.page_of(df, "frac_out", True, page, 25)
        assert n_pages == -(-len(df) // 25)
        assert rows["frac_out"].tolist() == full["frac_out"].iloc[page * 25:(page + 1) * 25].tolist()


def test_filters_and_histogram(run_ids):
    df = results.neurons(run_ids[0])
    assert set(results.filter_neurons(df, layer=1)["layer"]) == {1}
    assert (results.filter_neurons(df, min_frac=0.6)["frac"] >= 0.6).all()
    hist = results.fraction_histogram(run_ids[0])
    assert hist["count"].sum() == len(df)
    assert hist.groupby("layer")["count"].sum().tolist() == df.groupby("layer").size().tolist()


def test_module_sparsity_matches_masks(run_ids):
    from safetensors.torch import load_file

    rid = run_ids[0]
    masks = load_file(str(results.run_folder(rid) / "masks.safetensors"))
    table = results.module_sparsity(rid).set_index("param")
    for name, m in masks.items():
        assert table.loc[name, "sparsity"] == pytest.approx(m.float().mean().item())


def test_jaccard_of_a_run_with_itself_is_one(run_ids):
    jac = results.mask_jaccard(run_ids[0], run_ids[0])
    assert (jac["jaccard"] == 1.0).all() and len(jac) == 35


def test_corrupt_and_missing_artifacts(run_ids):
    rid = run_ids[1]
    path = results.run_folder(rid) / "nsa" / "summary.json"
    saved = path.read_bytes()
    try:
        path.write_text("{not json")
        with pytest.raises(results.ArtifactError, match="nsa/summary.json failed verification .size 9 bytes"):
            results.nsa_summary(rid)
        # the same size, one byte edited (an accuracy 1.0 -> 0.0 kind of change): caught by the checksum
        edited = bytearray(saved)
        edited[saved.index(b":") + 2] ^= 1
        path.write_bytes(bytes(edited))
        with pytest.raises(results.ArtifactError, match="nsa/summary.json failed verification .checksum mismatch"):
            results.nsa_summary(rid)
    finally:
        path.write_bytes(saved)
    assert results.nsa_summary(rid)["task"] == "sst2"
    with pytest.raises(results.ArtifactError, match="does not exist"):
        results.run_folder("0123456789abcdef")
    with pytest.raises(NSAError, match="not a run id"):
        results.run_folder("../etc")


def test_local_paths_only_inside_allowed_folders(cache_env, tmp_path, monkeypatch):
    assert check_local_path(str(cache_env / "x")) == (cache_env / "x").resolve()
    with pytest.raises(NSAError, match="NSA_ALLOWED_DIRS"):
        check_local_path("/etc")
    monkeypatch.setenv("NSA_ALLOWED_DIRS", "/etc")
    assert check_local_path("/etc/hosts") == __import__("pathlib").Path("/etc/hosts")


def test_layer_plan_reads_the_per_layer_sparsities(run_ids, monkeypatch):
    how, layers = results.layer_plan(run_ids[0])
    assert how == "uniform" and layers["sparsity"].tolist() == [0.5] * 5
    owl = {"sparsity_profile": "owl", "layer_sparsity": [0.44, 0.56], "outlier_ratio_percent": [2.0, 1.0]}
    monkeypatch.setattr(results, "read_json", lambda run_id, rel, required=True: owl)
    how, layers = results.layer_plan("x")
    assert how == "owl" and layers["outlier_ratio_percent"].tolist() == [2.0, 1.0]
    monkeypatch.setattr(results, "read_json", lambda run_id, rel, required=True: {})
    assert results.layer_plan("x") is None
