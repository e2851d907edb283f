"""Compare page: two or more runs side by side: accuracy per task, per-layer mask overlap (Jaccard), and the
neurons whose NSA labels or activation shifts differ most. Runs are in the URL as `?runs=a,b`."""
from __future__ import annotations

import streamlit as st

from nsa_app import figures, results, ui


def body() -> None:
    st.title("Compare runs")
    runs = results.list_runs()
    if len(runs) < 2:
        st.info("Comparing needs at least two finished runs.")
        return
    ids = runs["run_id"].tolist()
    wanted = [r for r in (ui.param("runs", "") or "").split(",") if r in ids] or ids[:2]
    chosen = st.multiselect("Runs", ids, default=wanted, format_func=results.run_label, key="cmp-runs")
    ui.set_params(runs=",".join(chosen))
    if len(chosen) < 2:
        st.info("Pick two or more runs.")
        return

    st.subheader("Accuracy per task")
    try:
        acc = results.compare_accuracy(chosen)
        ui.chart(figures.accuracy_bars(acc, color="run", title="Pruned accuracy per run (and dense)"), "cmp-acc")
        ui.table(acc, "compare-accuracy")
    except results.ArtifactError as err:
        ui.show_error(err)

    st.subheader("Does losing a cluster's activation go with losing accuracy?")
    points, corr = results.loss_vs_drop(chosen)
    if points.empty:
        st.info("None of these runs has NSA tables with masks.")
    else:
        ui.chart(figures.loss_drop_scatter(points), "cmp-loss-drop")
        for cluster, c in corr.items():
            if c["pearson"] is None:
                st.caption(f"{cluster}: {c['n']} runs — a correlation needs at least 3 runs with different drops")
            else:
                st.caption(f"{cluster}: Pearson {c['pearson']:+.2f}, Spearman {c['spearman']:+.2f} over {c['n']} runs")

    base = chosen[0]
    for other in chosen[1:]:
        st.subheader(f"{results.run_label(base)} vs {results.run_label(other)}")
        try:
            jac = results.mask_jaccard(base, other)
            ui.chart(figures.jaccard_lines(jac), f"jaccard-{other}")
            st.caption(f"mean Jaccard {jac['jaccard'].mean():.3f}")
        except results.ArtifactError as err:
            ui.show_error(err)
        try:
            diff = results.neuron_differences(base, other)
            st.markdown("**Neurons whose labels or activation shifts differ most**")
            ui.table(diff, f"neuron-diff-{other}")
        except results.ArtifactError as err:
            ui.show_error(err)


ui.guarded(body)
