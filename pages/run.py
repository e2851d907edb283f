"""Run page: configure a job (model, pruner with the options its registry entry declares, calibration, tasks,
NSA), launch it into the job store, and watch the queue live."""
from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from nsa.attribution import NSA_OPTIONS
from nsa.calibration import list_calibration_sources
from nsa.datasets import PRESETS, get_task, list_tasks
from nsa.errors import NSAError
from nsa.jobs import runs
from nsa.jobs.store import JobStore
from nsa.jobs.worker import recover
from nsa_app import results, ui
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
    kind = ui.model_kind(model)  # widgets keyed by kind: switching model restores that kind's defaults
    demo, start = kind == "demo", ui.STARTS[kind]
    left, right = st.columns(2)
    with left:
        st.subheader("Pruner")
        methods = list_methods()
        method = st.selectbox("Method", methods, index=methods.index("wanda") if "wanda" in methods else 0,
                              key="method")
        m = get_method(method)
        if m.help:
            st.caption(m.help)
        sparsity = st.slider("Sparsity", 0.0, 0.95, start.sparsity, 0.05, key="sparsity-demo" if demo else "sparsity")
        pattern = st.selectbox("Pattern", COMMON_PATTERNS, key="pattern",
                               help="N:M prunes N of every M consecutive weights: the sparsity is then N/M")
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
                "source": st.selectbox("Source", sources, key=f"calib-source-{kind}",
                                       index=sources.index(start.calibration[0])),
                "nsamples": int(st.number_input("nsamples", 1, 4096, 32, key="calib-n")),
                "seqlen": int(st.number_input("seqlen", 8, 8192, 128, key="calib-seqlen")),
                "seed": int(st.number_input("seed", 0, 2**31 - 1, 0, key="calib-seed"))}
        else:
            st.caption(f"{method} reads no calibration data.")
    with right:
        st.subheader("Evaluation")
        real = [t for t in list_tasks() if not get_task(t).synthetic]
        tasks = list_tasks() if demo else real
        chosen = st.multiselect("Tasks", tasks, default=[t for t in start.tasks if t in tasks], key=f"tasks-{kind}")
        limit = int(st.number_input("Examples per task (0 = all)", 0, 1_000_000, start.limit,
                                    key=f"eval-limit-{kind}"))
        if chosen:
            spec["evaluate"] = {"tasks": chosen, "limit": limit or None}
        prompt = prompt_form(kind)
        if prompt:
            spec["prompt"] = prompt
        st.subheader("Neuron semantic attribution")
        if st.checkbox("Run NSA", value=True, key="nsa-on"):
            labelled = [t for t in list_tasks(kind="classification") if demo or not get_task(t).synthetic]
            task = st.selectbox("Labelled task", labelled, key=f"nsa-task-{kind}",
                                index=labelled.index(start.nsa_task))
            spec["nsa"] = {"task": task,
                           "words": st.selectbox("Influential words", ["learned", "gradient"], key="nsa-words"),
                           "options": nsa_options()}
            if task in chosen:
                st.caption(f"NSA reads the evaluation's records of {task} (the same examples).")
            else:
                spec["nsa"]["limit"] = int(st.number_input("NSA examples (0 = all)", 0, 1_000_000, 200,
                                                           key="nsa-limit")) or None
    return spec


def prompt_form(kind: str) -> dict | None:
    """How classification tasks are asked; None = each task's reference prompt (lm-evaluation-harness's). A real
    model starts on the "review" template (`ui.STARTS`)."""
    with st.expander("Prompt", expanded=kind == "real"):
        presets = list(PRESETS)
        template = st.selectbox("Template", presets + ["custom"],
                                index=presets.index(ui.STARTS[kind].prompt),
                                key=f"prompt-template-{kind}",
                                format_func=lambda p: f"{p}: {PRESETS[p]!r}" if PRESETS.get(p) else p,
                                help="applies to the tasks whose rows have its fields; others keep their own prompt")
        if template == "custom":
            template = st.text_input("Custom template (fields in braces)", "Review: {text}\nSentiment:",
                                     key="prompt-custom").replace("\\n", "\n")
        c = st.columns(3)
        shots = int(c[0].number_input("Few-shot examples", 0, 32, 0, key="prompt-shots",
                                      help="drawn by seed from the training split, never from evaluated rows"))
        seed = int(c[1].number_input("Shot seed", 0, 2**31 - 1, 0, key="prompt-seed"))
        chat = c[2].checkbox("Chat template", value=False, key="prompt-chat",
                             help="wrap the prompt in the model's chat template (instruction-tuned models)")
    setting = {"template": template, "chat": chat, "num_fewshot": shots, "fewshot_seed": seed}
    return None if setting == {"template": "reference", "chat": False, "num_fewshot": 0, "fewshot_seed": 0} else setting


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


def launch(spec_dict: dict, executor) -> None:
    if not spec_dict.get("model"):
        raise NSAError("give a model: demo, a model of NSA_MODELS_DIR, a local folder or .gguf file, or a hub id")
    sub = ui.submit_checked(spec_dict, executor)
    if sub.already_done:
        st.success(f"This spec already ran (run {sub.run_id}): opening its results.")
        st.switch_page("pages/neurons.py", query_params={"run": sub.run_id})
    st.session_state["last-job"] = sub.run_id
    st.toast(sub.message)


STATUSES = ["queued", "running", "done", "failed", "cancelled"]


def _where(placement: dict | None) -> str:
    """The node a job ran or runs on (Ray jobs record it; the local worker runs jobs on this machine)."""
    if not placement:
        return "this machine"
    gpus = f", GPU {placement['gpus']}" if placement.get("gpus") else ""
    return f"{placement.get('executor', '')}: {placement.get('host', '?')}{gpus}"


def _duration(job) -> str:
    if not job.started:
        return ""
    seconds = (job.finished or time.time()) - job.started
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


@st.fragment(run_every=QUEUE_POLL_S)
def queue() -> None:
    """The job queue, re-read from the store every few seconds (only this fragment reruns): filterable, with
    cancel for running jobs, dismiss for finished ones, and links to results."""
    store = JobStore()
    recover(store)  # a job whose worker died is re-queued (or failed) here too, not shown as running for ever
    jobs = store.list()
    if not jobs:
        st.caption("No jobs yet.")
        return
    c = st.columns([2, 3])
    shown_status = c[0].multiselect("Status", STATUSES, default=[], key="queue-status", placeholder="all")
    text = c[1].text_input("Filter", key="queue-filter", placeholder="model, method, source, tag…").lower()
    tags = runs.tags()
    labelled = [(j, results.describe(j.spec, tags.get(j.id, ""))) for j in jobs]
    labelled = [(j, label) for j, label in labelled if (not shown_status or j.status in shown_status)
                and (not text or text in label.lower() or text in j.id)]
    placed = store.placements()
    rows = [{"run": j.id[:8], "status": j.status, "stage": j.stage, "progress": float(j.progress or 0.0),
             "duration": _duration(j), "where": _where(placed.get(j.id)), "what": label, "message": (j.error or j.message or "").splitlines()[0][:120]
             if (j.error or j.message) else ""} for j, label in labelled]
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="queue-table",
                 column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0.0,
                                                                            max_value=1.0, format="percent"),
                                "what": st.column_config.TextColumn("what", width="large")})
    for j, label in labelled[:20]:
        if j.active:
            c1, c2 = st.columns([5, 1])
            c1.progress(float(j.progress or 0.0), text=f"{j.id[:8]} · {j.stage or j.status} · {j.message or ''}")
            if c2.button("Cancel", key=f"cancel-{j.id}"):
                store.cancel(j.id)
                st.rerun(scope="fragment")
        elif j.status == "failed":
            c1, c2 = st.columns([5, 1])
            c1.error(f"{j.id[:8]} failed ({label}): {(j.error or j.message or '').splitlines()[0][:300]}")
            if c2.button("Dismiss", key=f"dismiss-{j.id}"):
                store.delete(j.id)
                st.rerun(scope="fragment")
            with st.expander(f"details of {j.id[:8]}"):
                st.code(j.traceback or "(no traceback recorded)", language="text")
        elif j.status == "done":
            st.page_link("pages/neurons.py", label=f"Open results: {label} ({_duration(j)})",
                         query_params={"run": j.id})


def manage_runs() -> None:
    """Tag or delete finished runs (the cache's run folders)."""
    listed = results.runs_table()
    if listed.empty:
        st.caption("No finished run yet.")
        return
    ids = listed["run_id"].tolist()
    run_id = st.selectbox("Run", ids, format_func=results.run_label, key="manage-run")
    c = st.columns([3, 1, 1])
    tag = c[0].text_input("Tag", runs.tags().get(run_id, ""), key=f"tag-{run_id}", max_chars=60)
    if c[1].button("Save tag", key="save-tag"):
        try:
            runs.set_tag(run_id, tag)
            st.rerun()
        except NSAError as err:
            ui.show_error(err)
    sure = c[2].checkbox("I am sure", key=f"sure-{run_id}")
    if st.button("Delete this run", key="delete-run", disabled=not sure):
        runs.delete_run(run_id)
        JobStore().delete(run_id)
        st.rerun()


def body() -> None:
    st.title("Run a pruning job")
    with st.container(border=True):
        spec = build_spec()
        executor = ui.executor_picker()
        if st.button("Launch", type="primary", key="launch"):
            try:
                launch(spec, executor)
            except NSAError as err:
                ui.show_error(err)
        with st.expander("Job spec"):
            st.json(spec)
    st.subheader("Queue")
    queue()
    with st.expander("Tag or delete runs"):
        manage_runs()


ui.guarded(body)
