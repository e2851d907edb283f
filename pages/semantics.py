"""Semantics (NSA) page: influential words per class (editable, re-run with the edited list), the neuron–word
matrix of the top neurons, clusters with the activation lost after pruning, and the validation (labelled vs
random ablation)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from nsa.artifacts import Entry
from nsa.atomic import write_json
from nsa.jobs.submit import Submission
from nsa_app import figures, results, ui


def rerun_with_words(run_id: str, edited: pd.DataFrame) -> Submission:
    """Save the edited word list as a word file (a cache entry keyed by its content) and submit the run's spec
    with it."""
    rows = [{"word": str(r["word"]).strip(), "cluster": str(r["cluster"]), "score": float(r.get("score", 1.0))}
            for _, r in edited.dropna(subset=["word"]).iterrows() if str(r["word"]).strip()]
    entry = Entry.keyed("word-lists", 1, {"rows": rows})
    entry.ensure(lambda tmp: write_json(tmp / "words.json", rows))
    spec = dict(results.spec(run_id))
    spec["nsa"] = {**(spec.get("nsa") or {}), "words": str(entry.path("words.json"))}
    return ui.submit_checked(spec)


def body() -> None:
    st.title("Semantics (NSA)")
    run_id = ui.pick_run()
    if run_id is None or not ui.has_nsa(run_id):
        return
    summary = results.nsa_summary(run_id)
    neurons = summary.get("neurons") or {}
    st.caption(f"task {summary.get('task')} · {summary.get('n_examples')} examples (the evaluation's example set) · "
               f"{neurons.get('labelled')} of {neurons.get('examined')} neurons labelled · "
               + ", ".join(f"{c}: {v.get('labelled')}" for c, v in (neurons.get("per_cluster") or {}).items()))
    ui.chance_banner(summary)

    st.subheader("Influential words per class")
    words = results.words(run_id)
    view = words[[c for c in ("word", "cluster", "score", "frequency") if c in words.columns]]
    edited = st.data_editor(view, num_rows="dynamic", hide_index=True, key="words-editor")
    st.download_button("Download CSV", view.to_csv(index=False).encode(), "words.csv", "text/csv",
                       key="csv-words", on_click="ignore")
    if st.button("Re-run NSA with these words", key="rerun-words"):
        sub = rerun_with_words(run_id, edited)
        st.success(sub.message)
        st.page_link("pages/run.py", label="Follow it on the Run page")

    st.subheader("Neuron–word matrix (top neurons)")
    matrix = results.neuron_word_matrix(run_id)
    if matrix.empty:
        st.info("No neuron was labelled in this run.")
    else:
        ui.chart(figures.neuron_word_heatmap(matrix), "neuron-word-matrix")

    st.subheader("Clusters and activation lost after pruning")
    cl = results.clusters(run_id)
    if cl.empty:
        st.info("This run has no cluster table (NSA without masks).")
    else:
        ui.chart(figures.cluster_loss(cl), "cluster-loss")
        ui.table(cl, f"clusters-{run_id}", help=results.CLUSTER_HELP)

    st.subheader("Validation: ablating labelled vs random neurons")
    val = results.validation(run_id)
    if val.empty:
        st.info("No validation recorded for this run (NSA ran without it, or nothing was labelled).")
        return
    cols = st.columns(2)
    with cols[0]:
        ui.chart(figures.validation_margin_bars(val), "validation-margin")
    with cols[1]:
        ui.chart(figures.validation_bars(val), "validation")
    detail = summary.get("validation_detail") or {}
    st.caption(f"Primary measure: the gold margin (log p(gold) − max log p(other), nats) over the cluster's own "
               f"class; accuracy beside it. Test: {detail.get('test', 'permutation test against random neurons')}, "
               f"{detail.get('draws', '?')} random draws.")
    for r in val.itertuples(index=False):
        if r.validated is None:
            st.info(f"{r.cluster}: {r.verdict or 'no labelled neuron, nothing to validate'}")
        elif r.validated:
            st.success(r.verdict)
        else:
            st.warning(r.verdict + ": treat these labels as unvalidated")
    ui.table(val.drop(columns=["verdict"]), f"validation-{run_id}", help=results.VALIDATION_HELP)


ui.guarded(body)
