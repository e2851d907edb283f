"""The study figures on constructed results tables: which task opens, and OWL curves kept apart."""
from __future__ import annotations

import pandas as pd

from nsa_app import study_figures as F


def _rows(profile: str, tasks=(("sentiment140", "sentiment", 100), ("sst2", "sentiment", 400), ("rte", "inference", 100))):
    return [{"run_id": f"{profile}-{sp}", "model": "m", "method": "wanda", "pattern": "unstructured",
             "profile": profile, "sparsity": sp, "source": "c4", "nsamples": 32, "seqlen": 128, "seed": 0,
             "task": task, "group": group, "n": n, "accuracy": 0.8 - sp / 2, "dense_accuracy": 0.8,
             "drop": sp / 2} for sp in (0.5, 0.7) for task, group, n in tasks]


def test_the_page_opens_on_the_sentiment_task_with_most_examples():
    table = pd.DataFrame(_rows("uniform"))
    assert F.default_task(table) == "sst2"  # 400 examples, though sentiment140 comes first
    assert F.default_task(table[table["task"] != "sst2"]) == "sentiment140"
    assert F.default_task(table[table["group"] != "sentiment"]) == "rte"


def test_owl_and_uniform_are_separate_curves():
    table = pd.DataFrame(_rows("uniform") + _rows("owl"))
    names = {trace.name for trace in F.accuracy_figure(table).data if trace.showlegend is not False}
    assert {"wanda", "wanda · owl"} <= names
    assert set(F.group_drop_figure(table).layout.annotations[i].text for i in range(2)) == {"method=wanda",
                                                                                           "method=wanda · owl"}
