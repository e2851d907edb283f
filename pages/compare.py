"""Compare page: runs side by side, within one model at a time: each run's accuracy drop against its own dense
baseline (paired intervals), cluster activation loss vs accuracy drop per model and task, per-layer mask overlap
and the neurons whose labels or shifts differ most (for runs of the same model only). Runs are in the URL as
`?runs=a,b`."""
from __future__ import annotations

import streamlit as st

from nsa_app import figures, results, ui


def body() -> None:
    st.title("Compare runs")
    listed = results.runs_table()
    if len(listed) < 2:
        st.info("Comparing needs at least two finished runs.")
        return
    ids = listed["run_id"].tolist()
    wanted = [r for r in (ui.param("runs", "") or "").split(",") if r in ids] or ids[:2]
    chosen = st.multiselect("Runs", ids, default=wanted, format_func=results.run_label, key="cmp-runs")
    ui.set_params(runs=",".join(chosen))
    if len(chosen) < 2:
        st.info("Pick two or more runs.")
        return
    by_model: dict[str, list[str]] = {}
    for rid in chosen:
        by_model.setdefault(results.model_of(rid), []).append(rid)
    if len(by_model) > 1:
        st.info(f"These runs prune {len(by_model)} different models ({', '.join(by_model)}): each model is compared "
                "in its own section. Dense baselines, correlations, mask overlaps and neuron ids are never mixed "
                "across models (neuron L3/111 of one model has nothing to do with L3/111 of another).")
    for model, run_ids in by_model.items():
        st.header(model)
        model_section(model, run_ids)


def model_section(model: str, run_ids: list[str]) -> None:
    acc = results.compare_accuracy(run_ids)
    ui.dense_chance_banners(acc[["run_id", "task"]].itertuples(index=False))  # its drops and losses are noise
    st.subheader("Accuracy drop per task, each run against its own dense model")
    if acc.empty:
        st.info("None of these runs evaluated a task.")
    else:
        ui.chart(figures.drop_bars(acc, f"{model}: accuracy drop per task (paired 95% intervals)"),
                 f"cmp-drop-{model}")
        ui.table(acc.drop(columns=["run_id", "model"]), f"compare-accuracy-{model}",
                 help={"dense": "the run's own dense accuracy on these examples",
                       "drop": "dense − pruned, in points", "n": "examples both were scored on"})
    st.subheader("Does losing a cluster's activation go with losing accuracy?")
    points, _ = results.loss_vs_drop(run_ids)
    if points.empty:
        st.info("None of these runs has NSA tables with masks.")
    else:
        for task, part in points.groupby("task"):
            ui.chart(figures.loss_drop_scatter(part), f"cmp-loss-drop-{model}-{task}")
            for cluster, c in results.loss_accuracy_correlation(part.to_dict("records")).items():
                if c["pearson"] is None:
                    st.caption(f"{task} · {cluster}: {c['n']} runs: a correlation needs at least 3 runs with "
                               "different drops")
                else:
                    st.caption(f"{task} · {cluster}: Pearson {c['pearson']:+.2f}, Spearman {c['spearman']:+.2f} "
                               f"over {c['n']} runs")
    if len(run_ids) < 2:
        st.caption("One run of this model: nothing to overlap.")
        return
    base = run_ids[0]
    for other in run_ids[1:]:
        st.subheader(f"{results.run_label(base)} vs {results.run_label(other)}")
        jac = results.mask_jaccard(base, other)
        if jac.empty:
            st.info("These runs share no pruned weight to compare.")
        else:
            ui.chart(figures.jaccard_lines(jac), f"jaccard-{other}")
            st.caption(f"mean Jaccard of the pruned weights {jac['jaccard'].mean():.3f} over {len(jac)} weights")
        diff = results.neuron_differences(base, other)
        st.markdown("**Neurons whose labels or activation shifts differ most**")
        ui.table(diff, f"neuron-diff-{other}")


ui.guarded(body)
