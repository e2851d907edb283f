"""AppTest of every page on runs made by the real pipeline: figures' data and tables' contents are checked
against the run's artifacts."""
from __future__ import annotations

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from nsa.attribution import NSA_OPTIONS
from nsa.jobs.spec import parse_spec
from nsa.jobs.store import JobStore
from nsa.jobs.submit import submit
from nsa_app import results
from nsa_app.results import run_folder
from pruners.registry import get_method
from tests.conftest import ROOT, small_spec
from tests.pages.helpers import TIMEOUT, no_errors, page, qp, spec_of, values


def test_neurons_page_heatmap_and_table(run_ids, cache_env):
    rid = run_ids[0]
    at = page("pages/neurons.py", run=rid)
    no_errors(at)
    matrix = results.sparsity_matrix(rid)
    assert matrix.shape == (5, 7)  # stories260K: 5 layers × q,k,v,o,gate,up,down
    if np.ptp(matrix.to_numpy()) < 0.01:  # uniform sparsity: said in words instead of a one-colour heatmap
        assert any("a uniform sparsity" in c.value for c in at.caption)
        first = 0
    else:
        heat = spec_of(at, 0)["data"][0]
        assert heat["type"] == "heatmap" and heat["x"] == [str(c) for c in matrix.columns]
        np.testing.assert_allclose(values(heat["z"]), matrix.to_numpy())
        first = 1
    assert 0.45 < matrix.to_numpy().mean() < 0.55  # 50% sparsity
    dist = spec_of(at, first)["data"][0]
    assert values(dist["z"]).sum() == len(results.neurons(rid))
    table = at.dataframe[0].value
    assert len(table) == min(50, len(results.neurons(rid)))
    assert table["selectivity"].is_monotonic_decreasing or table["selectivity"].isna().all()  # labelled first
    assert qp(at, "run") == rid


def test_neuron_detail_view(run_ids, cache_env):
    rid = run_ids[0]
    labelled = results.neurons(rid).query("label != ''")
    target = labelled.iloc[0] if len(labelled) else results.neurons(rid).iloc[0]
    at = page("pages/neurons.py", run=rid, layer=int(target["layer"]), neuron=int(target["index"]))
    no_errors(at)
    assert any(f"Neuron {int(target['index'])} of layer {int(target['layer'])}" in h.value for h in at.header)
    mask = spec_of(at, 0)["data"][0]
    masks = results.neuron_masks(rid, int(target["layer"]), int(target["index"]))
    pruned = sum(int(v.sum()) for v in masks.values())
    assert np.nansum(values(mask["z"])) == pruned
    if len(labelled):
        assert at.metric[2].value == target["label"]


def test_bad_neuron_is_a_readable_error(run_ids, cache_env):
    at = page("pages/neurons.py", run=run_ids[0], layer=0, neuron=10**7)
    assert not at.exception
    assert "has no neuron" in at.error[0].value


def test_missing_artifact_offers_recompute(run_ids, cache_env):
    rid = run_ids[1]
    src = run_folder(rid) / "neurons.parquet"
    saved = src.read_bytes()
    src.unlink()
    try:
        at = page("pages/neurons.py", run=rid)
        assert not at.exception
        assert "neurons.parquet is missing" in at.error[0].value
        assert any(b.label == "Recompute this run" for b in at.button)
    finally:
        src.write_bytes(saved)


def test_semantics_page(run_ids, cache_env):
    rid = run_ids[0]
    at = page("pages/semantics.py", run=rid)
    no_errors(at)
    words = results.words(rid)
    editor = at.dataframe[0].value  # the editable word list (st.data_editor)
    assert editor["word"].tolist() == words["word"].tolist()
    assert editor["cluster"].tolist() == words["cluster"].tolist()
    figs = [spec_of(at, i) for i in range(len(at.get("plotly_chart")))]
    titles = [f["layout"]["title"]["text"] for f in figs]
    val = results.validation(rid)
    if len(val):
        v = next(f for f in figs if f["layout"]["title"]["text"] == "Validation: labelled vs random ablation")
        assert list(v["data"][0]["x"]) == val["cluster"].tolist()
        np.testing.assert_allclose(values(v["data"][0]["y"]), val["labelled_drop"].astype(float))
        m = next(f for f in figs if f["layout"]["title"]["text"].startswith("Validation: confidence"))
        np.testing.assert_allclose(values(m["data"][0]["y"]), val["labelled_margin_drop"].astype(float))
    assert titles, "no figure on the semantics page"
    for r in val.itertuples(index=False):  # a label set that does not beat random is shown as such
        if r.validated is False:
            assert any(w.value.startswith("not validated") and "treat these labels as unvalidated" in w.value
                       for w in at.warning)


def test_accuracy_page(run_ids, cache_env):
    rid = run_ids[0]
    at = page("pages/accuracy.py", run=rid)
    no_errors(at)
    acc = results.accuracy(rid)
    bars = spec_of(at, 0)["data"]
    assert [b["name"] for b in bars] == ["dense", "pruned"]
    dense = acc.query("model == 'dense' and task == 'sst2'")["value"].iloc[0]
    assert values(bars[0]["y"])[0] == pytest.approx(dense)
    assert at.subheader[0].value == "sentiment"
    table = at.dataframe[0].value  # per task: both accuracies with intervals, the drop with its paired CI
    comparison = results.eval_comparison(rid)["tasks"]
    for _, r in table.iterrows():
        c = comparison[r["task"]]
        assert r["drop (points)"] == pytest.approx(100 * c["drop"], rel=1e-3)  # shown to 4 significant digits
        lo, hi = (100 * v for v in c["drop_ci95"])
        assert r["drop 95% CI"] == f"[{lo:.3f}, {hi:.3f}]"
        assert (r["lost"], r["gained"]) == (c["n_lost"], c["n_gained"])
        flips = results.eval_flips(rid, r["task"])  # every task's flips, from the per-example records
        assert sorted(flips.query("direction == 'lost'")["index"]) == sorted(c["lost"])
        assert sorted(flips.query("direction == 'gained'")["index"]) == sorted(c["gained"])


def test_flipped_examples_link_to_neurons(run_ids, cache_env):
    with_flips = [r for r in run_ids if len(results.flips(r))]
    if not with_flips:
        pytest.skip("pruning flipped no example in the fixture runs")
    rid = with_flips[0]
    flips = results.flips(rid)
    direction = flips["direction"].iloc[0]
    at = page("pages/accuracy.py", run=rid, dir=direction)
    no_errors(at)
    first = flips[flips["direction"] == direction].iloc[0]
    links = at.get("page_link")
    assert len(links) == len(first["neurons"])
    n = first["neurons"][0]
    assert f"L{n['layer']}/{n['index']}" in links[0].proto.label
    assert links[0].proto.page == "neurons"
    assert links[0].proto.query_string == f"run={rid}&layer={n['layer']}&neuron={n['index']}"


def test_queue_shows_and_cancels_a_job(cache_env, stories_dir):
    spec = small_spec(stories_dir, "wanda")
    spec["prune"]["sparsity"] = 0.3  # a spec that has not run: it stays queued (no worker in this test)
    job_id = submit(spec, start_worker=False).run_id
    at = page("pages/run.py")
    no_errors(at)
    queue = at.dataframe[0].value
    assert queue.loc[queue["run"] == job_id[:8], "status"].item() == "queued"
    assert "wanda 30% · wikitext2 4×64 seed 0 · stories260K" in queue.loc[queue["run"] == job_id[:8], "what"].item()
    at.button(key=f"cancel-{job_id}").click().run()
    assert JobStore().get(job_id).status == "cancelled"


def test_compare_page(run_ids, cache_env):
    at = page("pages/compare.py", runs=",".join(run_ids))
    no_errors(at)
    jac = results.mask_jaccard(run_ids[0], run_ids[1])
    assert ((jac["jaccard"] >= 0) & (jac["jaccard"] <= 1)).all()
    figs = {spec_of(at, i)["layout"]["title"]["text"]: spec_of(at, i) for i in range(len(at.get("plotly_chart")))}
    lines = figs["Mask overlap per layer"]["data"]
    assert sorted(tr["name"] for tr in lines) == sorted(jac["module"].unique())
    # activation loss vs accuracy drop: one point per run and cluster, read back from each run's NSA tables
    scatter = figs["Cluster activation loss vs accuracy drop across runs"]["data"]
    for rid in run_ids:
        drop = 100 * results.eval_comparison(rid)["tasks"]["sst2"]["drop"]
        cl = results.clusters(rid).query("level == 'cluster'").dropna(subset=["relative_lost"])
        for r in cl.itertuples(index=False):
            trace = next(t for t in scatter if t["name"] == r.name)
            pairs = list(zip(values(trace["x"]), values(trace["y"])))
            assert any(abs(x - r.relative_lost) < 1e-9 and abs(y - drop) < 1e-9 for x, y in pairs), (pairs, r, drop)


def test_run_page_form_from_registry(cache_env):
    at = page("pages/run.py")
    no_errors(at)
    assert at.selectbox(key="method").value == "wanda"
    at.selectbox(key="method").set_value("sparsegpt").run()
    no_errors(at)
    declared = {o.name for o in get_method("sparsegpt").options}
    generated = {w.key.split("-", 2)[2] for w in list(at.number_input) + list(at.selectbox) + list(at.checkbox)
                 if w.key and w.key.startswith("opt-sparsegpt-")}
    assert generated == declared

    nsa_keys = {w.key.split("-", 2)[2] for w in list(at.number_input) + list(at.checkbox)
                if w.key and w.key.startswith("opt-nsa-")}
    assert nsa_keys == {o.name for o in NSA_OPTIONS}


def test_run_page_sparsity_profile_and_structured_methods(cache_env):
    """OWL's options come from its declaration and make magnitude read calibration; structured methods take no
    profile but do read calibration."""
    def calibrated(at):
        return any((w.key or "").startswith("calib-source") for w in at.selectbox)

    at = page("pages/run.py")
    at.selectbox(key="method").set_value("magnitude").run()
    assert not calibrated(at)
    at.selectbox(key="profile").set_value("owl").run()
    no_errors(at)
    generated = {w.key.split("-", 2)[2] for w in at.number_input if w.key and w.key.startswith("opt-owl-")}
    assert generated == {"owl_m", "owl_lambda"} and calibrated(at)
    at.selectbox(key="method").set_value("flap").run()
    no_errors(at)
    assert not any(w.key == "profile" for w in at.selectbox) and calibrated(at)


def test_run_page_rejects_path_outside_allowed(cache_env, tmp_path):
    at = page("pages/run.py")
    at.radio(key="model-kind").set_value("local folder").run()
    at.text_input(key="model-path").input(str(tmp_path.parent.parent / "elsewhere")).run()
    assert not at.exception
    assert "outside the folders this app may read" in at.error[0].value


def test_open_neuron_form_puts_it_in_the_url(run_ids, cache_env):
    at = page("pages/neurons.py", run=run_ids[0])
    at.number_input(key="go-layer").set_value(2)
    at.number_input(key="go-index").set_value(7)
    submit = [b for b in at.button if b.label == "Open neuron"][0]
    submit.click().run()
    no_errors(at)
    assert qp(at, "layer") == "2" and qp(at, "neuron") == "7"
    assert any("Neuron 7 of layer 2" in h.value for h in at.header)


def test_launching_a_spec_that_already_ran_opens_its_results(run_ids, cache_env, stories_dir, monkeypatch):
    monkeypatch.setenv("NSA_ALLOWED_DIRS", str(stories_dir.parent))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    no_errors(at)
    at.radio(key="model-kind").set_value("local folder").run()
    at.text_input(key="model-path").input(str(stories_dir)).run()
    at.selectbox(key="calib-source-real").set_value("wikitext2").run()
    at.number_input(key="calib-n").set_value(4)
    at.number_input(key="calib-seqlen").set_value(64)
    at.multiselect(key="tasks-real").set_value(["sst2"])
    at.number_input(key="eval-limit-real").set_value(24)
    at.selectbox(key="prompt-template-real").set_value("reference")
    at.selectbox(key="nsa-task-real").set_value("sst2")
    at.checkbox(key="opt-nsa-label_at_chance").check().run()
    no_errors(at)
    at.button(key="launch").click().run()
    no_errors(at)

    expected = parse_spec(small_spec(stories_dir, "wanda")).id
    assert qp(at, "run") == expected
    assert at.title[0].value == "Pruned neurons"


def test_launch_with_bad_input_is_a_readable_error(cache_env):
    at = page("pages/run.py")
    at.radio(key="model-kind").set_value("hub id").run()
    at.button(key="launch").click().run()
    assert not at.exception
    assert "give a model" in at.error[0].value


def test_semantics_page_damaged_words(run_ids, cache_env):
    """The damaged-words section shows `nsa.damage` on the run's shifts, and the slider changes the share."""
    rid = run_ids[0]
    at = page("pages/semantics.py", run=rid)
    no_errors(at)
    report = results.damage(rid, 0.1)
    assert any(m.value == report.sentence() for m in at.markdown)
    shown = [d.value for d in at.dataframe]
    assert any(list(df.columns) == list(report.words.columns) and df["word"].tolist() == report.words["word"].tolist()
               for df in shown)
    at.slider(key="damage-share").set_value(0.3).run()
    no_errors(at)
    wider = results.damage(rid, 0.3)
    assert wider.n_damaged > report.n_damaged and any(m.value == wider.sentence() for m in at.markdown)
