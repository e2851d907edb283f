"""Pruned neurons page: sparsity per layer × module, per-layer distribution of the per-neuron pruned fraction, a
sortable/filterable paginated neuron table with label quality, search by word (`?word=`), the export, and a
neuron's own view (`?layer=&neuron=`): mask, output tokens, NSA words, top-activating examples dense vs pruned."""
from __future__ import annotations

import html

import pandas as pd
import streamlit as st

from nsa.errors import NSAError
from nsa.neuron_export import filter_found, word_neurons
from nsa_app import figures, live, results, ui

SORTABLE = ["selectivity", "auc", "frac", "frac_in", "frac_out", "shift_abs", "shift_rel", "layer", "index"]
LENS = ("What the neuron writes: its output weights (the down projection's column) scaled by the final norm's "
        "weight and read through the unembedding; top promoted and suppressed tokens, dense beside pruned (the "
        "column with this run's mask applied). Weights only.")
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
    output_tokens(run_id, layer, index)
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
        label_quality(run_id, layer, index)
    else:
        st.info("NSA labelled no words for this neuron (or the run has no NSA tables).")
    if detail["shift"]:
        s = detail["shift"]
        st.caption(f"dense mean {s.get('dense_mean'):.3f} → pruned mean {s.get('pruned_mean'):.3f}; "
                   f"pruned model's words: {', '.join(map(str, s.get('pruned_words') or [])) or 'none significant'}")
    st.subheader("Top-activating examples")
    st.caption(LEGEND)
    stored_examples(detail["examples"])
    on_demand_examples(run_id, layer, index)


def output_tokens(run_id: str, layer: int, index: int) -> None:
    st.subheader("Output tokens")
    st.caption(LENS)
    lens = live.output_tokens(run_id, layer, index)
    cols = st.columns(2)
    for col, part in zip(cols, ("dense", "pruned")):
        ranked = lens[part]
        col.caption(part)
        col.dataframe(pd.DataFrame({"promoted": ranked["promoted"], "logit +": ranked["promoted_logits"],
                                    "suppressed": ranked["suppressed"], "logit −": ranked["suppressed_logits"]}),
                      hide_index=True, key=f"lens-{part}")
    if lens["kept_norm"] is not None:
        st.caption(f"The pruned column keeps {lens['kept_norm']:.1%} of the dense column's norm; cosine "
                   f"{lens['cosine']:.3f}." if lens["cosine"] is not None else "The whole output column is pruned.")


def label_quality(run_id: str, layer: int, index: int) -> None:
    quality = live.stored_quality(run_id)
    if quality is None:
        st.caption("Label quality (detection AUC) is not computed for this run yet: the neuron table offers it.")
        return
    hit = quality[(quality["layer"] == layer) & (quality["index"] == index)]
    if hit.empty or pd.isna(hit.iloc[0]["auc"]):
        st.caption("Detection AUC undefined: the held-out examples all contain, or all lack, the label's words.")
        return
    q = hit.iloc[0]
    st.metric("label detection AUC (held-out)", f"{q['auc']:.3f}", help=live.quality_method(run_id))
    st.caption(f"95% interval [{q['auc_lo']:.3f}, {q['auc_hi']:.3f}] over {int(q['n_present'])} held-out examples "
               f"with a label word and {int(q['n_absent'])} without; pruned model {q['pruned_auc']:.3f}. "
               f"Method: {live.quality_method(run_id)}.")


def show_pair(tokens: list[str], dense: list[float], pruned: list[float] | None) -> None:
    scale = max([abs(a) for a in list(dense) + list(pruned or [])] or [1.0])
    left, right = st.columns(2)
    left.caption("dense")
    left.markdown(token_html(tokens, dense, scale), unsafe_allow_html=True)
    right.caption("pruned")
    if pruned is not None:
        right.markdown(token_html(tokens, pruned, scale), unsafe_allow_html=True)
    else:
        right.caption("the NSA tables of this run record dense activations only")


def stored_examples(examples: list[dict]) -> None:
    if not examples:
        return
    st.markdown("**From NSA (stored with the run)**")
    for ex in examples:
        st.markdown(f"**#{ex.get('rank', 0) + 1}** example {ex.get('example')} · max activation "
                    f"{ex.get('max_activation', 0):.3f} · words: {', '.join(ex.get('words') or [])}")
        show_pair(ex.get("tokens") or [], ex.get("activations") or [], ex.get("pruned_activations"))


def on_demand_examples(run_id: str, layer: int, index: int) -> None:
    data = live.stored_examples(run_id, layer, index)
    if data is None:
        st.caption("Top examples of any neuron on the task's prompts and on general text (the run's calibration "
                   "source, or wikitext2), dense and pruned, computed once and cached.")
        if not st.button("Compute top-activating examples", key=f"examples-{layer}-{index}"):
            return
        data = live.compute_examples(run_id, layer, index, live.progress_bar("reading the neuron"))
    ui.chart(figures.activation_histogram(data["histogram"]), f"hist-L{layer}-{index}")
    for name, src in data["sources"].items():
        if not src["n"]:
            continue
        st.markdown(f"**{'Task prompts' if name == 'task' else 'General text'}** ({src.get('name')}, {src['n']} "
                    f"texts): top {len(src['top_dense'])} by dense max activation")
        for ex in src["top_dense"]:
            st.caption(f"max dense {ex['max_dense']:.3f} · pruned {ex['max_pruned']:.3f}")
            show_pair(ex["tokens"], ex["dense"], ex["pruned"])


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

    word_search(run_id)
    st.subheader("Neurons")
    quality_offer(run_id)
    df = live.with_quality(results.neurons(run_id), run_id)
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
    min_auc = st.number_input("Min detection AUC (labelled neurons with a computed score)", 0.0, 1.0,
                              ui.param("auc", 0.0, float, valid=lambda v: 0.0 <= v <= 1.0), 0.05, key="flt-auc")
    shown = results.filter_neurons(df, None if layer == "all" else int(layer), labelled, min_frac, text)
    if min_auc > 0:
        shown = shown[shown["auc"].fillna(-1) >= min_auc]
    size = st.session_state.get("page-size", 50)
    n_pages = max(1, -(-len(shown) // size))
    page = int(st.number_input(f"Page (of {n_pages}, {len(shown)} neurons)", 1, n_pages,
                               ui.param("p", 1, int, valid=lambda v: 1 <= v <= n_pages), key="flt-page")) - 1
    rows, _ = results.page_of(shown, sort, desc, page, size)
    ui.set_params(layer=None if layer == "all" else layer, labelled="1" if labelled else None,
                  min=min_frac or None, auc=min_auc or None, q=text or None, sort=sort, desc="1" if desc else "0", p=page + 1)
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
    export_buttons(run_id)


def quality_offer(run_id: str) -> None:
    """Label quality for every labelled neuron: the method in one sentence, computed on request (one pass)."""
    if not results.neurons(run_id)["label"].ne("").any():
        return
    method = live.quality_method(run_id)
    if live.stored_quality(run_id) is not None:
        st.caption(f"Label quality (column auc): {method}.")
        return
    st.caption(f"Label quality, not computed yet: {method}.")
    if st.button("Compute label quality for every labelled neuron", key="quality"):
        live.compute_quality(run_id, live.progress_bar("scoring the labels on held-out examples"))
        st.rerun()


def word_search(run_id: str) -> None:
    """Which neurons respond to a word (`?word=`): every layer and cluster, filterable, linked to neuron pages."""
    st.subheader("Search by word")
    word = st.text_input("Which neurons respond to a word?", ui.param("word", ""), key="word",
                         placeholder="e.g. terrible").strip()
    ui.set_params(word=word or None)
    if not word:
        return
    try:
        found = word_neurons(run_id, word)
    except NSAError as err:
        st.warning(str(err))
        return
    f = st.columns(3)
    min_frac = f[0].number_input("Min pruned fraction", 0.0, 1.0, 0.0, 0.05, key="word-min")
    removed = f[1].selectbox("Removed", ["either", "removed", "kept"], key="word-removed")
    min_auc = f[2].number_input("Min detection AUC", 0.0, 1.0, 0.0, 0.05, key="word-auc")
    shown = filter_found(found, min_frac, {"either": None, "removed": True, "kept": False}[removed],
                         min_auc or None, live.stored_quality(run_id))
    if found.empty:
        st.info(f"'{word}' is one of the run's influential words, but no neuron passes the labelling test for it.")
        return
    st.caption(f"{len(shown)} of {len(found)} neurons for which '{word.lower()}' is significant (most selective "
               "first); open one with its link.")
    shown = shown.assign(open=[f"/neurons?run={run_id}&layer={r.layer}&neuron={r.index}"
                               for r in shown.itertuples(index=False)])
    ui.table(shown, f"word-{word.lower()}", help=results.NEURON_HELP, links={"open": "open neuron"})


def export_buttons(run_id: str) -> None:
    st.caption("Every neuron of the run (layout in docs/neurons.md; the same as `python -m nsa neurons RUN --export "
               "FILE`): labels, scores, detection AUC when computed, stored top examples, output tokens, pruned "
               "fractions. Built when clicked.")
    c = st.columns(2)
    for col, suffix in zip(c, (".jsonl", ".csv")):
        col.download_button(f"Export all neurons ({suffix[1:].upper()})", lambda s=suffix: live.export_bytes(run_id, s),
                            file_name=f"neurons-{run_id}{suffix}", key=f"export{suffix}", on_click="ignore")


def body() -> None:
    st.title("Pruned neurons")
    run_id = ui.pick_run()
    if run_id is None:
        return
    # the labels, shifts and examples here interpret NSA's task: say so when the dense model does not do it
    ui.chance_banner(results.read_json(run_id, "nsa/summary.json", required=False) or {})
    neuron = ui.param("neuron", None, int, valid=lambda v: v >= 0)
    layer = ui.param("layer", None, int, valid=lambda v: v >= 0)
    if neuron is not None and layer is not None:
        neuron_view(run_id, layer, neuron)
    else:
        table_view(run_id)


ui.guarded(body)
