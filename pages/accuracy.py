"""Task accuracy page: dense vs pruned per task with 95% intervals (sentiment first), and the flipped examples
with their influential words highlighted and links to the neurons that lost most."""
from __future__ import annotations

import html
import re

import streamlit as st

from nsa_app import figures, results, ui


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
    table = results.accuracy_table(run_id)
    ui.dense_chance_banners((run_id, task) for task in table.get("task", ()))
    for group, part in acc.groupby("group", sort=False):
        st.subheader(group)
        ui.chart(figures.accuracy_bars(part, title=f"{group}: dense vs pruned"), f"accuracy-{group}")
    ui.table(table, f"accuracy-{run_id}", help=results.ACCURACY_HELP)
    st.caption("Intervals: Wilson 95% on each accuracy; paired normal 95% on the drop (same examples, dense vs "
               "pruned); McNemar's exact test on the flips.")

    st.subheader("Flipped examples")
    tasks = list(dict.fromkeys(acc["task"]))
    nsa_task = (results.read_json(run_id, "nsa/summary.json", required=False) or {}).get("task")
    default = ui.param("task", nsa_task or (tasks[0] if tasks else None))
    task = st.selectbox("Task", tasks, index=tasks.index(default) if default in tasks else 0, key="flip-task")
    ui.set_params(task=task)
    n = int(table.loc[table["task"] == task, "n"].iloc[0]) if (table["task"] == task).any() else None
    if task != nsa_task:
        other = results.eval_flips(run_id, task)
        if other.empty:
            st.info(f"Pruning flipped none of the {n} examples of {task}.")
            return
        st.caption(f"{(other['direction'] == 'lost').sum()} lost, {(other['direction'] == 'gained').sum()} "
                   f"gained of the {n} examples the table's drop rests on. Influential words and neurons are shown "
                   f"for the NSA task ({nsa_task or 'none'}).")
        ui.table(other, f"flips-{run_id}-{task}")
        return
    flips = results.flips(run_id)
    if flips.empty:
        st.info(f"Pruning flipped none of the {n} examples of {task}.")
        return
    directions = ["lost", "gained"]
    direction = st.radio("Direction", directions, horizontal=True, key="flip-dir",
                         index=directions.index(ui.param("dir", "lost")) if ui.param("dir", "lost") in directions
                         else 0)
    ui.set_params(dir=direction)
    part = flips[flips["direction"] == direction]
    st.caption(f"{len(part)} of the {n} examples went {'dense right → pruned wrong' if direction == 'lost' else 'dense wrong → pruned right'} "
               "(the same examples and records as the table above)")
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
