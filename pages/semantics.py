"""Semantics (NSA) page: influential words per class (editable, re-run with the edited list), the neuron–word
matrix of the top neurons, clusters with the activation lost after pruning, the validation (labelled vs
random ablation) and, beside it, the restore experiment (pruned neurons put back vs random ones, `nsa.restore`)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from nsa.artifacts import Entry
from nsa.atomic import write_json
from nsa.errors import NSAError
from nsa.jobs.submit import Submission
from nsa.restore import MIN_DRAWS, RestoreConfig, cached_restore, restore_run
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
    removed = (summary.get("pruned_neurons") or {}).get("labelled_removed")
    if removed:
        per = (summary.get("pruned_neurons") or {}).get("labelled_removed_per_cluster") or {}
        st.info(f"Pruning removed {removed} labelled neurons whole ("
                + ", ".join(f"{c}: {n}" for c, n in per.items()) + "): they compute nothing in the pruned model. "
                "The neuron table's `removed` column lists them.")

    st.subheader("Influential words per class")
    words = results.words(run_id)
    view = words[[c for c in ("word", "cluster", "score", "frequency") if c in words.columns]]
    edited = st.data_editor(view, num_rows="dynamic", hide_index=True, key="words-editor")
    st.download_button("Download CSV", ui.safe_csv(view).encode(), "words.csv", "text/csv",
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

    damage_view(run_id)

    st.subheader("Validation: ablating labelled vs random neurons")
    val = results.validation(run_id)
    if val.empty:
        st.info("No validation recorded for this run (NSA ran without it, or nothing was labelled).")
    else:
        validation_view(run_id, summary, val)
    restore_view(run_id, summary, val)


def damage_view(run_id: str) -> None:
    """Which words label the neurons pruning damaged most (`nsa.damage`)."""
    st.subheader("Words of the most damaged neurons")
    share = st.slider("most damaged: top share of labelled neurons by activation lost on their words", 0.01, 0.5,
                      0.1, 0.01, key="damage-share")
    report = results.damage(run_id, share)
    if report is None:
        st.info("This run has no activation shifts (NSA without masks, or nothing was labelled).")
        return
    st.markdown(report.sentence())
    st.caption(f"{report.n_damaged} of {report.n_labelled} labelled neurons; on average they lost "
               f"{report.mean_damage:.0%} of their activation on their label words (over 100%: the activation "
               "changed sign). Each word and cluster is compared with a random draw of as many labelled neurons "
               "(one-sided hypergeometric test; Benjamini-Hochberg q over the words). A word's cluster is its class "
               "in the word list above.")
    ui.table(report.clusters, f"damage-clusters-{run_id}", help=results.DAMAGE_HELP)
    ui.table(report.words, f"damage-words-{run_id}", help=results.DAMAGE_HELP)


def validation_view(run_id: str, summary: dict, val: pd.DataFrame) -> None:
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


def restore_config(summary: dict) -> RestoreConfig | None:
    """The restore experiment the widgets ask for (None, with the reason shown, when they ask for nothing valid)."""
    per = (summary.get("neurons") or {}).get("per_cluster") or {}
    clusters = [c for c, v in per.items() if v.get("labelled")]
    cols = st.columns([2, 3, 1, 1])
    mode = cols[0].radio("Neurons", ["an NSA cluster", "hand-picked"], key="restore-mode",
                         index=0 if clusters else 1, horizontal=True)
    draws = cols[2].number_input("Random draws", min_value=MIN_DRAWS, value=MIN_DRAWS, step=1, key="restore-draws")
    seed = cols[3].number_input("Seed", min_value=0, value=0, step=1, key="restore-seed")
    try:
        if mode == "an NSA cluster":
            if not clusters:
                st.info("No cluster has labelled neurons in this run: pick neurons by hand.")
                return None
            cluster = cols[1].selectbox("Cluster", clusters, key="restore-cluster")
            return RestoreConfig(cluster=cluster, draws=int(draws), seed=int(seed))
        text = cols[1].text_input("Neurons (LAYER:INDEX, comma-separated)", key="restore-neurons")
        if not text.strip():
            st.caption("Type the neurons to put back, e.g. 0:3, 2:40.")
            return None
        return RestoreConfig(neurons=text, draws=int(draws), seed=int(seed))
    except NSAError as err:
        st.warning(str(err))
        return None


def restore_view(run_id: str, summary: dict, val: pd.DataFrame) -> None:
    """Ablation (the run's validation) and restore side by side. The restore runs here, in this process, with a
    progress bar, and is cached (`nsa.restore.restore_run`): the next visit shows it at once."""
    st.subheader("Ablation and restore: the same neurons, both ways")
    st.caption("Ablation removes a cluster's top labelled neurons from the dense model; restore puts the pruned "
               "ones back into the pruned model (their dense rows of gate/up and column of down) and re-scores the "
               "run's example set. Both are compared with random neurons of the same layers (permutation p-value).")
    config = restore_config(summary)
    if config is None:
        return
    try:
        result = cached_restore(run_id, config)
    except NSAError as err:
        st.warning(str(err))
        return
    if result is None:
        n = summary.get("n_examples")
        st.caption(f"Not computed yet: {1 + config.draws} scorings of the {n} examples with the run's model.")
        if not st.button("Run restore", key="restore-run", type="primary"):
            return
        bar = st.progress(0.0, text="restore: loading the model")
        result = restore_run(run_id, config, progress=lambda e: bar.progress(min(max(e.fraction, 0.0), 1.0),
                                                                             text=(e.message or "restore")[:90]))
        bar.empty()
    ablation, restore = results.ablation_and_restore(val, result)
    cols = st.columns(2)
    with cols[0]:
        st.markdown("**Ablation (dense model)**")
        st.write(ablation)
    with cols[1]:
        st.markdown("**Restore (pruned model)**")
        st.write(restore)
    ui.table(results.restore_table(result), f"restore-{run_id}", help=results.RESTORE_HELP)


ui.guarded(body)
