"""The neuron page's issue-#16 parts with AppTest on fixture runs: output tokens, on-demand examples, label
quality, search by word in the URL, export downloads, and the time to open a neuron with stored data."""
from __future__ import annotations

import csv
import io

import pytest

from nsa import label_quality as LQ
from nsa.logit_lens import top_tokens
from nsa.neuron_export import word_neurons
from nsa_app import live, results
from tests.conftest import cpu_time
from tests.pages.helpers import no_errors, page, qp


def test_neuron_view_tokens_examples_and_speed(run_ids, cache_env, stories):
    rid = run_ids[0]
    at = page("pages/neurons.py", run=rid, layer=1, neuron=9)
    no_errors(at)
    lens = top_tokens(*stories, 1, 9, live._run(rid).masks)
    assert at.dataframe[0].value["promoted"].tolist() == lens["dense"]["promoted"]
    assert at.dataframe[1].value["suppressed"].tolist() == lens["pruned"]["suppressed"]
    assert any("Token colours" in c.value for c in at.caption)
    compute = [b for b in at.button if b.label == "Compute top-activating examples"]
    at = compute[0].click().run()
    no_errors(at)
    assert any(t.value.startswith("**Task prompts** (sst2") for t in at.markdown)
    assert live.stored_examples(rid, 1, 9) is not None
    start = cpu_time()  # CPU seconds: a loaded machine stretches the wall clock, not the work
    at = page("pages/neurons.py", run=rid, layer=1, neuron=9)  # stored data: a new session
    elapsed = cpu_time() - start
    no_errors(at)
    assert not [b for b in at.button if b.label == "Compute top-activating examples"]
    assert elapsed < 1.5, elapsed  # target < 1 s (bench_neurons: 0.76 s); the CPU clock here counts AppTest too


def test_quality_search_and_export(run_ids, cache_env):
    rid = run_ids[0]
    at = page("pages/neurons.py", run=rid)
    no_errors(at)
    at = [b for b in at.button if b.label == "Compute label quality for every labelled neuron"][0].click().run()
    no_errors(at)
    quality = LQ.stored(rid)
    assert quality is not None and len(quality) == (results.neurons(rid)["label"] != "").sum()
    at.selectbox(key="flt-sort").set_value("auc").run()
    table = at.dataframe[-1].value
    assert table["auc"].dropna().is_monotonic_decreasing and table["auc"].iloc[0] == pytest.approx(quality["auc"].max(), rel=1e-3)
    word = results.neurons(rid).query("label != ''").iloc[0]["label"].split(": ")[1].split(", ")[0]
    at = page("pages/neurons.py", run=rid, word=word)
    no_errors(at)
    found = at.dataframe[0].value
    assert found[["layer", "index"]].values.tolist() == word_neurons(rid, word)[["layer", "index"]].values.tolist()
    assert found["open"].iloc[0].startswith(f"/neurons?run={rid}&layer=")
    assert qp(at, "word") == word
    at = page("pages/neurons.py", run=rid, word="xyzzy")
    assert any("occurs in none of the 24 sst2 examples" in w.value for w in at.warning)  # beside the chance banner
    rows = list(csv.DictReader(io.StringIO(live.export_bytes(rid, ".csv").decode())))  # tokens may hold newlines
    assert len(rows) == len(results.neurons(rid)) and rows[0]["pos_str"]
