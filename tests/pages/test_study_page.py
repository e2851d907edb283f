"""The Study page (AppTest) on the tiny real study: results, figures' data, the form and its errors."""
from __future__ import annotations

import json
import shutil

from streamlit.testing.v1 import AppTest

from nsa.study import runner
from tests.conftest import ROOT

PAGE = str(ROOT / "pages" / "study.py")


def study_page(**params) -> AppTest:
    """The Study page through app.py's navigation, as the browser shows it (not yet run)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    for k, v in params.items():
        at.query_params[k] = v
    at.switch_page(PAGE)
    return at


def _errors(at) -> list[str]:
    assert not at.exception, [e.value for e in at.exception]
    return [e.value for e in at.error]


def test_page_shows_a_finished_study(tiny_study, study_cache):
    path, plan = tiny_study
    (study_cache / "studies").mkdir(exist_ok=True)
    shutil.copy(path, study_cache / "studies" / "tiny.yaml")
    at = study_page(study="tiny").run()
    assert _errors(at) == []
    assert at.selectbox(key="study-pick").value == "tiny"
    assert any("2 runs; 2 finished" in m.value for m in at.markdown)
    charts = at.get("plotly_chart")
    assert len(charts) == 3
    spec = json.loads(charts[0].proto.spec)
    wanda = [t for t in spec["data"] if t.get("name") == "wanda"]
    assert wanda and wanda[0]["x"] == [0.3, 0.7]
    groups = {t["name"] for t in json.loads(charts[1].proto.spec)["data"]}
    assert groups == {"sentiment", "inference"}
    assert len(at.dataframe) >= 2  # group finding + results table
    table = runner.study_table(plan)  # stories260K does not beat chance on every task: the page says which
    below = sorted(set(table.loc[table["dense_above_chance"].eq(False), "task"]))
    said = [c.value for c in at.caption if "does not beat the best constant guess" in c.value]
    assert said == ([f"The dense model does not beat the best constant guess on {', '.join(below)} (one-sided "
                     "binomial test, 0.05): a drop there is noise. The same comparison without those tasks:"]
                    if below else [])
    assert not [b for b in at.button if b.label in ("Run", "Run the missing runs")]  # nothing left to run


def test_form_refuses_a_large_grid_and_saves_a_finished_one(tiny_study, stories_dir, study_cache, monkeypatch):
    monkeypatch.setenv("NSA_ALLOWED_DIRS", str(stories_dir.parent))
    at = study_page().run()
    at.selectbox(key="study-pick").set_value("➕ define a new study").run()
    assert _errors(at) == []
    at.number_input(key="study-max-runs").set_value(5)  # < default grid (3 methods x 2 sources x 6 x 3 seeds)
    at.button[0].click().run()
    assert any("more than the limit of 5" in e for e in _errors(at))
    # the tiny study again under another name: every run exists, so nothing is queued
    at.radio(key="study-model-kind").set_value("local folder").run()
    at.text_input(key="study-model-path").set_value(str(stories_dir)).run()
    at.text_input(key="study-name").set_value("tiny-again")
    at.multiselect(key="study-methods").set_value(["wanda"])
    at.multiselect(key="study-sources-real").set_value(["sst2"])
    at.multiselect(key="study-sparsities").set_value([0.3, 0.7])
    at.multiselect(key="study-tasks-real").set_value(["sst2", "rte"])
    at.number_input(key="study-seeds").set_value(1)
    at.number_input(key="study-nsamples").set_value(4)
    at.number_input(key="study-seqlen").set_value(32)
    at.number_input(key="study-limit-real").set_value(12)
    at.selectbox(key="study-prompt-real").set_value("reference")  # the tiny study asks as lm-eval does
    at.button[0].click().run()
    assert _errors(at) == []
    assert at.query_params["study"] in ("tiny-again", ["tiny-again"])
    assert (study_cache / "studies" / "tiny-again.yaml").is_file()
    assert any("2 runs; 2 finished" in m.value for m in at.markdown)


def test_model_folder_outside_the_allowed_folders_is_refused(study_cache, tmp_path):
    at = study_page().run()
    at.selectbox(key="study-pick").set_value("➕ define a new study").run()
    at.radio(key="study-model-kind").set_value("local folder").run()
    at.text_input(key="study-model-path").set_value(str(tmp_path)).run()
    assert any("outside the folders this app may read" in e for e in _errors(at))
