"""Pruned neurons page: sparsity per layer × module, per-layer distribution of the per-neuron pruned fraction, a
sortable/filterable paginated neuron table, and a neuron's own view (`?layer=&neuron=`)."""
from __future__ import annotations

import html

import pandas as pd
import streamlit as st

from nsa.errors import NSAError
from nsa_app import figures, results, ui

SORTABLE = ["selectivity", "frac", "frac_in", "frac_out", "shift_abs", "shift_rel", "layer", "index"]
LEGEND = ("Token colours: red = positive activation, blue = negative; the stronger the colour, the larger |activation| "
          "relative to the largest on that example (dense and pruned on one scale). Hover a token for its value.")


def token_html(tokens: list[str], acts: list[float], scale: float) -> str:
    """Tokens with a background whose strength is the activation (red positive, blue negative)."""
    spans = []
    for tok, a in zip(tokens, acts):
        alpha = min(1.0, abs(float(a)) / scale) if scale > 0 else 0.0
        colour = f"rgba(214,39,40,{alpha:.2f})" if a >= 0 else f"rgba(31,119,180,{alpha:.2f})"
        spans.append(f'<span title="{float(a):.3f}" style="background:{colour};padding:1px 0">'
                     f'{html.escape(tok.replace("▁", " "))}</span>')
    return "<div style='line-height:1.9;font-family:monospace'>" + "".join(spans) + "</div>"


def neuron_view(run_id: str, layer: int, index: int) -> None:
    if st.button("← back to the neuron table", key="back"):
        ui.set_params(neuron=None)
        st.rerun()
    try:
        detail = results.neuron_detail(run_id, layer, index)
    except NSAError as err:  # a hand-edited or stale link: say what exists, and the button above leads back
        st.error(str(err))
        return
    row = detail["row"]
    st.header(f"Neuron {index} of layer {layer}")
    c = st.columns(4)
    c[0].metric("pruned fraction (in)", f"{row['frac_in']:.1%}", help=results.NEURON_HELP["frac_in"])
    c[1].metric("pruned fraction (out)", f"{row['frac_out']:.1%}", help=results.NEURON_HELP["frac_out"])
    c[2].metric("NSA label", row.get("label") or "—", help=row.get("label") or None)
    shift = row.get("shift_abs")
    c[3].metric("activation shift on its words", "—" if shift is None or shift != shift else f"{shift:+.3f}",
                help=results.NEURON_HELP["shift_abs"])
    if detail["masks"]:
        ui.chart(figures.mask_pattern(detail["masks"]), f"mask-L{layer}-{index}")
    label = detail["label"]
    if label:
        st.subheader("NSA words and scores")
        words = list(label.get("words") or [])
        cols = {"word": words}
        for k in ("selectivity", "q_value", "mean_activation", "summed_activation", "occurrences"):
            v = label.get(k)
            if v is not None and len(v) == len(words):
                cols[k] = [float(x) for x in v]
        ui.table(pd.DataFrame(cols), f"words-L{layer}-{index}",
                 help={"selectivity": "σ above the neuron's mean over all text tokens",
                       "q_value": "Benjamini-Hochberg adjusted p-value of the permutation test"})
        st.caption(f"cluster {label.get('cluster')}")
    else:
        st.info("NSA labelled no words for this neuron (or the run has no NSA tables).")
    if detail["shift"]:
        s = detail["shift"]
        st.caption(f"dense mean {s.get('dense_mean'):.3f} → pruned mean {s.get('pruned_mean'):.3f}; "
                   f"pruned model's words: {', '.join(map(str, s.get('pruned_words') or [])) or 'none significant'}")
    examples = detail["examples"]
    st.subheader("Top-activating examples")
    if not examples:
        st.info("No top examples are stored for this neuron: they are kept for labelled neurons (up to the 5000 "
                "most selective).")
        return
    st.caption(LEGEND)
    for ex in examples:
        dense = ex.get("activations") or []
        pruned = ex.get("pruned_activations")
        scale = max([abs(a) for a in list(dense) + list(pruned or [])] or [1.0])
        st.markdown(f"**#{ex.get('rank', 0) + 1}** example {ex.get('example')} · max activation "
                    f"{ex.get('max_activation', 0):.3f} · words: {', '.join(ex.get('words') or [])}")
        left, right = st.columns(2)
        left.caption("dense")
        left.markdown(token_html(ex.get("tokens") or [], dense, scale), unsafe_allow_html=True)
        right.caption("pruned")
        if pruned is not None:
            right.markdown(token_html(ex.get("tokens") or [], pruned, scale), unsafe_allow_html=True)
        else:
            right.caption("the NSA tables of this run record dense activations only")


def table_view(run_id: str) -> None:
    matrix = results.sparsity_matrix(run_id)
    values = matrix.to_numpy().ravel()
    if len(values) and values.max() - values.min() < 0.01:  # one flat colour says nothing: say it in words
        st.caption(f"Every pruned module has {values.mean():.1%} of its weights pruned (a uniform sparsity): the "
                   "differences are between neurons, shown below.")
    else:
        ui.chart(figures.sparsity_heatmap(matrix), "sparsity-heatmap")
    plan = results.layer_plan(run_id)
    if plan is not None and plan[0] != "uniform":  # uniform: the heatmap says it all
        how, layers = plan
        line = " · ".join(f"L{r.layer} {r.sparsity:.3f}" for r in layers.itertuples(index=False))
        if "outlier_ratio_percent" in layers:
            line += "; outlier ratio % " + " · ".join(f"{x:.2f}" for x in layers["outlier_ratio_percent"])
        st.caption(f"Per-layer sparsity ({how}): {line}")
    ui.chart(figures.fraction_distribution(results.fraction_histogram(run_id)), "fraction-distribution")

    st.subheader("Neurons")
    df = results.neurons(run_id)
    layers = sorted(df["layer"].unique().tolist())
    f = st.columns([1, 1, 1, 2, 1, 1])
    layer_opts = ["all"] + [str(x) for x in layers]
    current_layer = ui.param("layer", "all", valid=lambda v: v in layer_opts)
    layer = f[0].selectbox("Layer", layer_opts, key="flt-layer",
                           index=layer_opts.index(current_layer) if current_layer in layer_opts else 0)
    labelled = f[1].checkbox("Labelled only", key="flt-labelled", value=ui.param("labelled", "0") == "1")
    min_frac = f[2].number_input("Min pruned fraction", 0.0, 1.0,
                                 ui.param("min", 0.0, float, valid=lambda v: 0.0 <= v <= 1.0), 0.05, key="flt-min")
    text = f[3].text_input("Label contains", ui.param("q", ""), key="flt-q")
    default_sort = "selectivity" if (df["label"] != "").any() else "frac"  # labelled neurons first when any
    sort = f[4].selectbox("Sort by", SORTABLE, key="flt-sort",
                          index=SORTABLE.index(ui.param("sort", default_sort, valid=lambda v: v in SORTABLE)))
    desc = f[5].checkbox("Descending", value=ui.param("desc", "1") == "1", key="flt-desc")
    shown = results.filter_neurons(df, None if layer == "all" else int(layer), labelled, min_frac, text)
    size = st.session_state.get("page-size", 50)
    n_pages = max(1, -(-len(shown) // size))
    page = int(st.number_input(f"Page (of {n_pages}, {len(shown)} neurons)", 1, n_pages,
                               ui.param("p", 1, int, valid=lambda v: 1 <= v <= n_pages), key="flt-page")) - 1
    rows, _ = results.page_of(shown, sort, desc, page, size)
    ui.set_params(layer=None if layer == "all" else layer, labelled="1" if labelled else None,
                  min=min_frac or None, q=text or None, sort=sort, desc="1" if desc else "0", p=page + 1)
    event = ui.table(rows, f"neurons-{run_id}-p{page + 1}", help=results.NEURON_HELP, on_select="rerun",
                     selection_mode="single-row", key="neuron-table")
    st.selectbox("Rows per page", ui.PAGE_SIZES, key="page-size", index=1)
    picked = getattr(getattr(event, "selection", None), "rows", None) or []
    if picked:
        r = rows.iloc[picked[0]]
        ui.set_params(layer=int(r["layer"]), neuron=int(r["index"]))
        st.rerun()
    with st.form("open-neuron"):
        c = st.columns(3)
        lay = c[0].number_input("Layer", 0, int(max(layers)), int(layers[0]), key="go-layer")
        idx = c[1].number_input("Neuron index", 0, int(df["index"].max()), 0, key="go-index")
        if c[2].form_submit_button("Open neuron"):
            ui.set_params(layer=int(lay), neuron=int(idx))
            st.rerun()


def body() -> None:
    st.title("Pruned neurons")
    run_id = ui.pick_run()
    if run_id is None:
        return
    neuron = ui.param("neuron", None, int, valid=lambda v: v >= 0)
    layer = ui.param("layer", None, int, valid=lambda v: v >= 0)
    if neuron is not None and layer is not None:
        neuron_view(run_id, layer, neuron)
    else:
        table_view(run_id)


ui.guarded(body)
