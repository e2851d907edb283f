"""Run page: configure a job (model, pruner with the options its registry entry declares, calibration, tasks,
NSA), launch it into the job store, and watch the queue live."""
from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from nsa.attribution import NSA_OPTIONS
from nsa.calibration import list_calibration_sources
from nsa.datasets import list_tasks
from nsa.errors import NSAError
from nsa.jobs.store import JobStore
from nsa.jobs.submit import submit
from nsa_app import ui
from pruners import get_method, list_methods, list_profiles
from pruners.config import COMMON_PATTERNS
from pruners.profiles import UNIFORM, get_profile

QUEUE_POLL_S = 2.0


def option_widget(method: str, opt) -> object:
    """One input generated from a pruner's `Option` declaration (type, default, min/max, choices, help)."""
    key = f"opt-{method}-{opt.name}"
    if opt.choices:
        choices = list(opt.choices)
        return st.selectbox(opt.name, choices, index=choices.index(opt.default) if opt.default in choices else 0,
                            help=opt.help, key=key)
    if opt.type is bool:
        return st.checkbox(opt.name, value=bool(opt.default), help=opt.help, key=key)
    if opt.type is int:
        return int(st.number_input(opt.name, value=int(opt.default), step=1, help=opt.help, key=key,
                                   min_value=int(opt.min) if opt.min is not None else None,
                                   max_value=int(opt.max) if opt.max is not None else None))
    if opt.type is float:
        return float(st.number_input(opt.name, value=float(opt.default), help=opt.help, key=key, format="%g",
                                     min_value=float(opt.min) if opt.min is not None else None,
                                     max_value=float(opt.max) if opt.max is not None else None))
    return st.text_input(opt.name, value="" if opt.default is None else str(opt.default), help=opt.help, key=key)


def build_spec() -> dict:
    model = ui.model_input()
    demo = ui.demo_ready()
    left, right = st.columns(2)
    with left:
        st.subheader("Pruner")
        methods = list_methods()
        method = st.selectbox("Method", methods, index=methods.index("wanda") if "wanda" in methods else 0,
                              key="method")
        m = get_method(method)
        if m.help:
            st.caption(m.help)
        # the demo starts where its accuracy visibly falls (Wanda 70%: 8-14 points, docs/demo.md); other
        # models at the papers' usual 50% (a separate widget, so switching model restores that default)
        if model == "demo":
            sparsity = st.slider("Sparsity", 0.0, 0.95, 0.7, 0.05, key="sparsity-demo")
        else:
            sparsity = st.slider("Sparsity", 0.0, 0.95, 0.5, 0.05, key="sparsity")
        pattern = st.selectbox("Pattern", COMMON_PATTERNS, key="pattern")
        options = {}
        if m.options:
            with st.expander(f"{method} options", expanded=False):
                options = {opt.name: option_widget(method, opt) for opt in m.options}
        spec: dict = {"model": model, "prune": {"method": method, "sparsity": sparsity, "pattern": pattern,
                                                "options": options}}
        profile = UNIFORM
        if not m.structured:  # a sparsity profile spreads an unstructured method's sparsity over the layers
            profile = st.selectbox("Sparsity profile", list_profiles(), key="profile",
                                   help="; ".join(f"{p}: {get_profile(p).help}" for p in list_profiles()))
            if profile != UNIFORM:
                spec["prune"]["sparsity_profile"] = profile
                spec["prune"]["profile_options"] = {opt.name: option_widget(profile, opt)
                                                    for opt in get_profile(profile).options}
        if m.needs_calibration or get_profile(profile).needs_calibration:
            st.subheader("Calibration")
            sources = list_calibration_sources()
            spec["calibration"] = {
                "source": st.selectbox("Source", sources, key="calib-source",
                                       index=sources.index("demo-generic" if demo else "wikitext2")),
                "nsamples": int(st.number_input("nsamples", 1, 4096, 32, key="calib-n")),
                "seqlen": int(st.number_input("seqlen", 8, 8192, 128, key="calib-seqlen")),
                "seed": int(st.number_input("seed", 0, 2**31 - 1, 0, key="calib-seed"))}
        else:
            st.caption(f"{method} reads no calibration data.")
    with right:
        st.subheader("Evaluation")
        tasks = list_tasks()
        default = [t for t in (("demo-reviews", "demo-unseen") if demo else ("sst2",)) if t in tasks]
        chosen = st.multiselect("Tasks", tasks, default=default, key="tasks")
        limit = int(st.number_input("Examples per task (0 = all)", 0, 1_000_000, 200, key="eval-limit"))
        if chosen:
            spec["evaluate"] = {"tasks": chosen, "limit": limit or None}
        st.subheader("Neuron semantic attribution")
        if st.checkbox("Run NSA", value=True, key="nsa-on"):
            labelled = list_tasks(kind="classification")
            spec["nsa"] = {"task": st.selectbox("Labelled task", labelled, key="nsa-task",
                                                index=labelled.index("demo-reviews" if demo else "sst2")),
                           "words": st.selectbox("Influential words", ["learned", "gradient"], key="nsa-words"),
                           # the demo's 400 reviews: labels from 200 did not beat random ablation, from 400
                           # they did (docs/nsa.md)
                           "limit": int(st.number_input("NSA examples (0 = all)", 0, 1_000_000,
                                                        0 if model == "demo" else 200, key="nsa-limit")) or None,
                           "options": nsa_options()}
    return spec


def nsa_options() -> dict:
    """The NSA settings form, generated from `nsa.attribution.NSA_OPTIONS` (as the CLI flags are)."""
    options: dict = {}
    with st.expander("NSA options"):
        for opt in NSA_OPTIONS:
            if opt.default is None:  # an automatic default (n_ablate): 0 keeps it
                value = int(st.number_input(f"{opt.name} (0 = automatic)", 0, None, 0, help=opt.help,
                                            key=f"opt-nsa-{opt.name}"))
                if value:
                    options[opt.name] = value
            else:
                options[opt.name] = option_widget("nsa", opt)
    return options


def launch(spec_dict: dict) -> None:
    if not spec_dict.get("model"):
        raise NSAError("give a model: demo, a local folder, or a hub id")
    sub = submit(spec_dict)
    if sub.already_done:
        st.success(f"This spec already ran (run {sub.run_id}): opening its results.")
        st.switch_page("pages/neurons.py", query_params={"run": sub.run_id})
    st.session_state["last-job"] = sub.run_id
    st.toast(sub.message)


@st.fragment(run_every=QUEUE_POLL_S)
def queue() -> None:
    """The job queue, re-read from the store every few seconds (only this fragment reruns)."""
    jobs = JobStore().list()
    if not jobs:
        st.caption("No jobs yet.")
        return
    rows = [{"id": j.id, "status": j.status, "stage": j.stage, "progress": float(j.progress or 0.0),
             "message": j.message, "model": j.spec.get("model"),
             "method": (j.spec.get("prune") or {}).get("method"),
             "created": time.strftime("%H:%M:%S", time.localtime(j.created))} for j in jobs]
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="queue-table",
                 column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0.0,
                                                                            max_value=1.0, format="percent")})
    for j in jobs[:20]:
        if j.active:
            c1, c2 = st.columns([4, 1])
            c1.progress(float(j.progress or 0.0), text=f"{j.id} · {j.stage or j.status} · {j.message or ''}")
            if c2.button("Cancel", key=f"cancel-{j.id}"):
                JobStore().cancel(j.id)
                st.rerun(scope="fragment")
        elif j.status == "failed":
            st.error(f"job {j.id} failed: {j.error or j.message}")
            with st.expander(f"details of {j.id}"):
                st.code(j.traceback or "(no traceback recorded)", language="text")
        elif j.status == "done":
            st.page_link("pages/neurons.py", label=f"Open results of {j.id}", query_params={"run": j.id})


def body() -> None:
    st.title("Run a pruning job")
    with st.container(border=True):
        spec = build_spec()
        if st.button("Launch", type="primary", key="launch"):
            try:
                launch(spec)
            except NSAError as err:
                ui.show_error(err)
        with st.expander("Job spec"):
            st.json(spec)
    st.subheader("Queue")
    queue()


ui.guarded(body)
