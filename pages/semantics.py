"""Semantics (NSA) page: influential words per class (editable, re-run with the edited list), the neuron–word
matrix of the top neurons, clusters with the activation lost after pruning, and the validation (labelled vs
random ablation)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from nsa.artifacts import Entry
from nsa.atomic import write_json
from nsa.jobs.submit import Submission, submit
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
    return submit(spec)


def body() -> None:
    st.title("Semantics (NSA)")
    run_id = ui.pick_run()
    if run_id is None:
        return
    summary = results.nsa_summary(run_id)
    st.caption(f"task {summary.get('task')} · {summary.get('n_examples')} examples · "
               f"{(summary.get('neurons') or {}).get('labelled')} of {(summary.get('neurons') or {}).get('examined')}"
               f" neurons labelled")

    st.subheader("Influential words per class")
    words = results.words(run_id)
    view = words[[c for c in ("word", "cluster", "score", "frequency") if c in words.columns]]
    edited = st.data_editor(view, num_rows="dynamic", hide_index=True, key="words-editor")
    st.download_button("Download CSV", view.to_csv(index=False).encode(), "words.csv", "text/csv",
                       key="csv-words", on_click="ignore")
    if st.button("Re-run NSA with these words", key="rerun-words"):
        sub = rerun_with_words(run_id, edited)
        st.success(f"{sub.message}; follow it on the Run page")

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
        ui.table(cl, f"clusters-{run_id}")

    st.subheader("Validation: ablating labelled vs random neurons")
    val = results.validation(run_id)
    if val.empty:
        st.info("No validation recorded for this run.")
        return
    has_margin = val["labelled_margin_drop"].notna().any()
    cols = st.columns(2) if has_margin else [st.container()]
    with cols[0]:
        ui.chart(figures.validation_bars(val), "validation")
    if has_margin:
        with cols[1]:
            ui.chart(figures.validation_margin_bars(val), "validation-margin")
        st.caption("Accuracy saturates on a confident model, so the gold margin (log p(gold) − max log p(other), "
                   "nats, over the cluster's own class) is shown too.")
    for r in val.itertuples(index=False):
        if r.beats_random is None:
            st.info(f"{r.cluster}: no labelled neuron, nothing to validate")
        elif r.beats_random:
            st.success(f"{r.cluster}: ablating its {r.n_neurons} labelled neurons drops accuracy "
                       f"{r.labelled_drop:.1f} points vs {r.random_drop_mean:.1f} ± {r.random_drop_std or 0:.1f} "
                       f"for random neurons")
        else:
            margin = ""
            if r.beats_random_margin:
                margin = (f" — but it does cost more confidence than random ({r.labelled_margin_drop:.2f} vs "
                          f"{r.random_margin_drop_mean:.2f} ± {r.random_margin_drop_std or 0:.2f} nats)")
            st.warning(f"{r.cluster}: the label set does NOT beat random ablation in accuracy "
                       f"({r.labelled_drop:.1f} vs {r.random_drop_mean:.1f} ± {r.random_drop_std or 0:.1f} points)"
                       f"{margin}" + ("" if margin else ": treat these labels as unvalidated"))
    ui.table(val, f"validation-{run_id}")


ui.guarded(body)
