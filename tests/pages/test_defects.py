"""The defects a new user found (numbered as in the issue), each checked on the real pipeline's runs."""
from __future__ import annotations

import shutil

import pytest

from nsa.jobs import runs
from nsa.jobs.pipeline import run_job
from nsa.jobs.store import JobStore
from nsa.jobs.submit import submit
from nsa_app import figures, results, study_figures, study_report, ui
from nsa_app.ui import readable, safe_csv
from tests.conftest import small_spec
from tests.pages.helpers import no_errors, page


def test_01_a_local_folder_with_no_environment_variable_is_a_sentence_not_a_crash(cache_env, monkeypatch, tmp_path):
    monkeypatch.delenv("NSA_DATA_DIR", raising=False)
    monkeypatch.delenv("NSA_MODELS_DIR", raising=False)
    for path, key in (("pages/run.py", "model"), ("pages/study.py", "study-model")):
        at = page(path)
        if path.endswith("study.py"):
            at.selectbox(key="study-pick").set_value("➕ define a new study").run()
        at.radio(key=f"{key}-kind").set_value("local folder").run()
        at.text_input(key=f"{key}-path").input(str(tmp_path)).run()
        assert not at.exception, [e.value for e in at.exception]
        assert "outside the folders this app may read" in at.error[0].value
        inside = cache_env / "models" / "m"
        inside.mkdir(parents=True, exist_ok=True)
        at.text_input(key=f"{key}-path").input(str(inside)).run()
        assert not at.exception and not at.error


def test_01_the_hub_id_field_does_not_bypass_the_folder_check(cache_env, tmp_path):
    at = page("pages/run.py")
    at.radio(key="model-kind").set_value("hub id").run()
    at.text_input(key="model-hub").input(str(tmp_path)).run()
    assert not at.exception and "outside the folders this app may read" in at.error[0].value


def test_02_one_evaluation_per_task_shared_by_every_number(run_ids, cache_env):
    """The accuracy table, the flips list and the Compare figure all rest on the same records and say how many."""
    for rid in run_ids:
        table = results.accuracy_table(rid).set_index("task").loc["sst2"]
        flips = results.flips(rid)
        assert int(table["lost"]) == int((flips["direction"] == "lost").sum())
        assert int(table["gained"]) == int((flips["direction"] == "gained").sum())
        compared = results.compare_accuracy([rid]).set_index("task").loc["sst2"]
        assert compared["drop"] == pytest.approx(table["drop (points)"]) and compared["n"] == table["n"] == 24
        assert results.nsa_summary(rid)["n_examples"] == 24  # NSA read the same 24 examples
    at = page("pages/accuracy.py", run=run_ids[0])
    no_errors(at)
    # a caption when pruning flipped some examples, an info box when it flipped none: both name the 24
    assert any("of the 24 examples" in c.value for c in [*at.caption, *at.info])


def test_03_compare_never_mixes_models(app_cache, stories_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(app_cache / "runs", cache / "runs")
    monkeypatch.setenv("NSA_CACHE_DIR", str(cache))
    demo = run_job({"model": "demo", "prune": {"method": "magnitude", "sparsity": 0.5},
                    "evaluate": {"tasks": ["demo-reviews"], "limit": 16}})
    ids = sorted(p.name for p in (cache / "runs").iterdir())
    at = page("pages/compare.py", runs=",".join(ids))
    no_errors(at)
    assert any("2 different models" in i.value for i in at.info)
    assert [h.value for h in at.header] == ["stories260K", "demo"] or \
        sorted(h.value for h in at.header) == ["demo", "stories260K"]
    text = " ".join(c.value for c in at.caption)
    assert "nan" not in text and demo.name[:8] not in text.split("stories260K")[0]


def test_05_a_run_without_nsa_offers_to_add_it_and_reuses_its_pruning(app_cache, tmp_path, monkeypatch, stories_dir):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("NSA_CACHE_DIR", str(cache))
    monkeypatch.setenv("NSA_NO_WORKER", "1")
    spec = small_spec(stories_dir, "magnitude")
    spec.pop("nsa")
    folder = run_job(spec)
    at = page("pages/semantics.py", run=folder.name)
    no_errors(at)
    assert any("did not ask for neuron semantic attribution" in i.value for i in at.info)
    at.button(key=f"add-nsa-{folder.name}").click().run()
    no_errors(at)
    queued = JobStore().list("queued")
    assert len(queued) == 1 and queued[0].spec["nsa"]["task"] == "sst2"
    done = run_job(queued[0].spec, run_id=queued[0].id)
    log = (done / "logs" / "job.log").read_text()
    assert f"stage prune reused from {folder}" in log and "stage nsa\n" in log


def test_06_every_labelled_neuron_has_top_examples(run_ids, cache_env):
    for rid in run_ids:
        labels = results.read_table(rid, "nsa/neuron_labels.jsonl")
        examples = results.read_table(rid, "nsa/top_examples.jsonl")
        with_examples = set(zip(examples["layer"], examples["index"]))
        assert set(zip(labels["layer"], labels["index"])) <= with_examples


def test_07_cluster_counts_come_from_the_summary_table(run_ids, cache_env):
    for rid in run_ids:
        summary = results.nsa_summary(rid)
        clusters = results.clusters(rid)
        for row in clusters[clusters["level"] == "cluster"].itertuples():
            assert row.n_neurons == summary["neurons"]["per_cluster"].get(row.name, {}).get("labelled", 0)
            assert row.n_neurons <= summary["neurons"]["examined"]


def test_08_and_09_verdicts_state_their_test_and_a_model_at_chance_is_flagged(run_ids, cache_env):
    """stories260K is at chance on SST-2: the Semantics and Accuracy pages say so; each validation verdict names
    its p-value and number of draws."""
    at = page("pages/semantics.py", run=run_ids[0])
    assert not at.exception
    assert any("not significantly above chance" in w.value for w in at.warning)
    verdicts = [m.value for m in list(at.success) + list(at.warning) if "draws" in m.value]
    assert verdicts and all("p = " in v and "20 draws" in v for v in verdicts)
    at = page("pages/accuracy.py", run=run_ids[0])
    assert any("not significantly above chance on sst2" in w.value for w in at.warning)


def test_09_every_page_that_interprets_the_task_flags_a_dense_model_at_chance(run_ids, cache_env):
    """The Neurons page (table and a neuron's view) and the Compare page warn with the Semantics page's sentence
    (one helper); Compare flags the two runs' shared dense model once."""
    sentence = "The dense model is not significantly above chance on sst2: accuracy"
    semantics = [w.value for w in page("pages/semantics.py", run=run_ids[0]).warning if sentence in w.value]
    assert len(semantics) == 1
    labels = results.read_table(run_ids[0], "nsa/neuron_labels.jsonl")
    for params in ({}, {"layer": int(labels.iloc[0]["layer"]), "neuron": int(labels.iloc[0]["index"])}):
        at = page("pages/neurons.py", run=run_ids[0], **params)
        no_errors(at)
        assert [w.value for w in at.warning if sentence in w.value] == semantics
    at = page("pages/compare.py", runs=",".join(run_ids))
    no_errors(at)
    assert [w.value for w in at.warning if sentence in w.value] == semantics
    at = page("pages/accuracy.py", run=run_ids[0])
    assert [w.value for w in at.warning if sentence in w.value] == semantics


def test_10_numbers_are_rounded_and_lists_are_text():
    import pandas as pd

    df = pd.DataFrame({"mean_diff": [-1e-18, 0.123456789], "words": [["a", "b"], ["c"]],
                       "selectivity": [[1.1897338184519586], [2.0]]})
    shown = readable(df)
    assert shown["mean_diff"].tolist() == [-1e-18, 0.1235] and shown["words"].tolist() == ["a, b", "c"]
    assert shown["selectivity"].tolist() == ["1.19", "2"]
    # a q-value of 2e-45 is shown in scientific notation, not as 0.000…0002 (a page's float format)
    assert ui._tiny_or_huge(pd.Series([2e-45, 0.5])) and ui._tiny_or_huge(pd.Series([3e7]))
    assert not ui._tiny_or_huge(pd.Series([0.0, 0.25, 12.5])) and not ui._tiny_or_huge(pd.Series(["a"]))


def test_10_neuron_page_shows_no_raw_lists(run_ids, cache_env):
    labels = results.read_table(run_ids[0], "nsa/neuron_labels.jsonl")
    row = labels.iloc[0]
    at = page("pages/neurons.py", run=run_ids[0], layer=int(row["layer"]), neuron=int(row["index"]))
    no_errors(at)
    assert not any("[" in c.value for c in at.caption)


def test_11_runs_are_told_apart_failed_jobs_dismissed_runs_tagged(run_ids, cache_env, stories_dir):
    labels = {results.run_label(r) for r in run_ids}
    assert len(labels) == len(run_ids) and all("seed" in lab or "magnitude" in lab for lab in labels)
    runs.set_tag(run_ids[0], "baseline")
    assert results.run_label(run_ids[0]).split(" · ", 1)[1].startswith("[baseline]")
    spec = small_spec(stories_dir, "wanda")
    spec["prune"]["sparsity"] = 0.35
    store = JobStore()
    job_id = submit(spec, store, start_worker=False).run_id
    store.claim(job_id, 1)
    store.finish(job_id, "failed", message="boom", error="boom")
    at = page("pages/run.py")
    assert not at.exception
    assert any("failed" in e.value and "seed 0" in e.value for e in at.error)
    at.button(key=f"dismiss-{job_id}").click().run()
    assert store.get(job_id) is None
    runs.set_tag(run_ids[0], "")


def test_12_one_colour_per_role_on_every_figure(run_ids, cache_env):
    acc = results.accuracy(run_ids[0])
    fig = figures.accuracy_bars(acc)
    colours = {t.name: t.marker.color for t in fig.data}
    assert colours == {"dense": figures.ROLE_COLORS["dense"], "pruned": figures.ROLE_COLORS["pruned"]}


def test_12_the_study_figures_keep_the_role_colours(tiny_study):
    """The Study page's dense line has the dense colour; no method curve or task group takes a role's colour."""
    roles = {figures.ROLE_COLORS["dense"], figures.ROLE_COLORS["pruned"]}
    assert not roles & set(study_figures.PALETTE)
    view = study_report.study_report(tiny_study[1])
    fig = view.accuracy_figure()
    assert fig.layout.shapes and {s.line.color for s in fig.layout.shapes} == {figures.ROLE_COLORS["dense"]}
    curves = {t.line.color for t in fig.data if t.mode == "lines+markers"}
    assert curves and not curves & roles
    bars = {t.marker.color for t in view.group_figure().data}
    assert bars and not bars & roles


def test_13_a_bad_neuron_link_leads_back(run_ids, cache_env):
    at = page("pages/neurons.py", run=run_ids[0], layer=0, neuron=99999)
    assert not at.exception and "has no neuron 99999" in at.error[0].value
    at.button(key="back").click().run()
    assert not at.exception and any(s.value == "Neurons" for s in at.subheader)


def test_13_a_real_model_starts_where_the_run_page_does_on_the_study_page(cache_env, stories_dir):
    """The study form leaves the synthetic demo sets for a real model: C4 calibration, SST-2 on 200 examples and
    the "review" prompt, as the Run page (both from `ui.STARTS`)."""
    at = page("pages/study.py")
    at.selectbox(key="study-pick").set_value("➕ define a new study").run()
    assert at.multiselect(key="study-sources-demo").value == ["demo-generic", "demo-reviews"]
    run = page("pages/run.py")
    for form, key in ((at, "study-model"), (run, "model")):
        form.radio(key=f"{key}-kind").set_value("local folder").run()
        form.text_input(key=f"{key}-path").input(str(stories_dir)).run()
        no_errors(form)
    study = {"calibration": at.multiselect(key="study-sources-real").value,
             "tasks": at.multiselect(key="study-tasks-real").value,
             "limit": at.number_input(key="study-limit-real").value,
             "prompt": at.selectbox(key="study-prompt-real").value}
    assert study == {"calibration": ["c4"], "tasks": ["sst2"], "limit": 200, "prompt": "review"}
    assert study == {"calibration": [run.selectbox(key="calib-source-real").value],
                     "tasks": run.multiselect(key="tasks-real").value,
                     "limit": run.number_input(key="eval-limit-real").value,
                     "prompt": run.selectbox(key="prompt-template-real").value}


@pytest.mark.parametrize("params", [{"min": "5"}, {"p": "-3"}, {"sort": "nope"}, {"layer": "x"}, {"min": "nan"}])
def test_13_malformed_url_parameters_fall_back_to_defaults(run_ids, cache_env, params):
    at = page("pages/neurons.py", run=run_ids[0], **params)
    no_errors(at)


def test_14_csv_downloads_neutralise_formulas():
    import pandas as pd

    text = safe_csv(pd.DataFrame({"text": ["=HYPERLINK(1)", "+a", "-b", "@c", "fine"], "x": [-1.5, 2, 3, 4, 5]}))
    assert "'=HYPERLINK(1)" in text and "'+a" in text and "'-b" in text and "'@c" in text
    assert "\nfine,5" in text and "-1.5" in text and "'-1.5" not in text


@pytest.mark.skipif(shutil.which("chromium") is None, reason="PNG export needs Debian's chromium (.ci/run installs it)")
def test_15_png_export(run_ids, cache_env):
    png = figures.to_png(figures.accuracy_bars(results.accuracy(run_ids[0])))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    html = figures.to_html({"a": figures.accuracy_bars(results.accuracy(run_ids[0])),
                            "b": figures.accuracy_bars(results.accuracy(run_ids[1]))})
    assert html.count("plotly.js v") <= 2 and len(html) < 6_000_000  # plotly.js once for the whole page
