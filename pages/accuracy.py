"""Task accuracy page: dense vs pruned per task with 95% intervals (sentiment first), and the flipped examples
with their influential words highlighted and links to the neurons that lost most."""
from __future__ import annotations

import html
import re

import streamlit as st

from nsa import figures, results, ui


def highlight(text: str, words: list[str]) -> str:
    escaped = html.escape(text)
    for w in sorted(set(words), key=len, reverse=True):
        escaped = re.sub(rf"(?i)\b({re.escape(html.escape(w))})\b", r"<mark>\1</mark>", escaped)
    return escaped


def body() -> None:
    st.title("Task accuracy")
    run_id = ui.pick_run()
    if run_id is None:
        return
    acc = results.accuracy(run_id)
    for group, part in acc.groupby("group", sort=False):
        st.subheader(group)
        ui.chart(figures.accuracy_bars(part, title=f"{group}: dense vs pruned"), f"accuracy-{group}")
    wide = acc.pivot_table(index=["group", "task"], columns="model", values="value", sort=False).reset_index()
    if {"dense", "pruned"} <= set(wide.columns):
        wide["drop (points)"] = (wide["dense"] - wide["pruned"]) * 100
    ui.table(wide, f"accuracy-{run_id}")

    st.subheader("Flipped examples")
    flips = results.flips(run_id)
    if flips.empty:
        st.info("No flips recorded (the run has no NSA tables, or pruning flipped no example).")
        return
    directions = ["lost", "gained"]
    direction = st.radio("Direction", directions, horizontal=True, key="flip-dir",
                         index=directions.index(ui.param("dir", "lost")) if ui.param("dir", "lost") in directions
                         else 0)
    ui.set_params(dir=direction)
    part = flips[flips["direction"] == direction]
    st.caption(f"{len(part)} examples {'dense right → pruned wrong' if direction == 'lost' else 'dense wrong → pruned right'}")
    for r in part.head(50).itertuples(index=False):
        with st.container(border=True):
            st.markdown(highlight(str(r.text), list(r.words) if r.words is not None else []),
                        unsafe_allow_html=True)
            st.caption(f"example {r.index} · gold {r.gold} · dense {r.dense_prediction} → pruned "
                       f"{r.pruned_prediction}")
            cols = st.columns(5)
            for col, n in zip(cols, list(r.neurons) if r.neurons is not None else []):
                col.page_link("pages/neurons.py", label=f"L{n['layer']}/{n['index']} {n.get('label') or ''} "
                              f"(−{n['activation_lost']:.2f})",
                              query_params={"run": run_id, "layer": n["layer"], "neuron": n["index"]})


ui.guarded(body)
