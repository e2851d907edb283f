"""Study page: define a grid (methods × calibration sets × sparsities × seeds), launch it, watch it, read it.

Only calls into `nsa.study` and draws; the science (expansion, table, breakpoints, findings) lives there.
The open study is in the URL (`?study=<name>`), so a copied link reopens it.
"""
from __future__ import annotations

import streamlit as st

from nsa.calibration import list_calibration_sources
from nsa.datasets import PRESETS, list_tasks
from nsa.errors import NSAError
from nsa.study import library, runner
from nsa_app import study_report as report
from nsa_app import ui
from pruners import list_methods
from pruners.config import COMMON_PATTERNS

SPARSITY_CHOICES = [round(0.1 * k, 1) for k in range(1, 10)]
# examples per task where the Run page reads all (the demo: NSA's labels need its 400 reviews): a study runs many
# jobs and no NSA
STUDY_LIMIT = 100


def _tasks() -> list[str]:
    return [t for t in list_tasks() if t not in ("wikitext2", "c4")]


def _pick(options: list[str], wanted: list[str]) -> list[str]:
    return [w for w in wanted if w in options] or options[:1]


def define_form() -> None:
    """The study form: the Run page's settings as a base spec, with lists where a study sweeps; it starts where the
    Run page does for the chosen kind of model (`ui.STARTS`: a real model never starts on the synthetic demo sets).
    Widgets that depend on the kind are keyed by it, so switching model restores that kind's defaults."""
    model = ui.model_input(prefix="study-")
    kind = ui.model_kind(model)
    start = ui.STARTS[kind]
    with st.form("define-study"):
        name = st.text_input("Study name", value="my-study", key="study-name", help="letters, digits, '_', '-' or '.'")
        pattern = st.selectbox("Pattern", COMMON_PATTERNS, key="study-pattern")
        methods = st.multiselect("Methods (axis)", list_methods(), key="study-methods",
                                 default=_pick(list_methods(), ["magnitude", "wanda", "sparsegpt"]))
        sources = st.multiselect("Calibration sources (axis)", list_calibration_sources(), key=f"study-sources-{kind}",
                                 default=_pick(list_calibration_sources(), list(start.calibration)))
        sparsities = st.multiselect("Sparsities (axis)", SPARSITY_CHOICES, key="study-sparsities", default=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
        c3, c4, c5 = st.columns(3)
        n_seeds = c3.number_input("Calibration seeds", key="study-seeds", min_value=1, max_value=10, value=3, help="seeds 0..n-1")
        nsamples = c4.number_input("Calibration samples", key="study-nsamples", min_value=1, max_value=1024, value=16)
        seqlen = c5.number_input("Sequence length", key="study-seqlen", min_value=8, max_value=8192, value=128)
        tasks = st.multiselect("Tasks", _tasks(), key=f"study-tasks-{kind}", default=_pick(_tasks(), list(start.tasks)))
        presets = list(PRESETS)
        template = st.selectbox("Prompt template", presets, index=presets.index(start.prompt),
                                key=f"study-prompt-{kind}",
                                format_func=lambda p: f"{p}: {PRESETS[p]!r}" if PRESETS.get(p) else p,
                                help="applies to the tasks whose rows have its fields; others keep their own prompt")
        c6, c7 = st.columns(2)
        limit = c6.number_input("Examples per task (0 = all)", key=f"study-limit-{kind}", min_value=0,
                                value=start.limit or STUDY_LIMIT)
        max_runs = c7.number_input("Run limit (larger grids need confirming)", key="study-max-runs", min_value=1, value=200)
        confirm = st.checkbox("Confirm a grid larger than the run limit", key="study-confirm")
        submitted = st.form_submit_button("Save and run", type="primary")
    if not submitted:
        return
    if not model:
        st.error("Choose a model: the demo model, a local folder or a hub id.")
        return
    base = {"model": model, "prune": {"method": (methods or ["wanda"])[0], "sparsity": 0.5, "pattern": pattern},
            "calibration": {"source": (sources or list(start.calibration))[0], "nsamples": int(nsamples),
                            "seqlen": int(seqlen), "seed": 0},
            "evaluate": {"tasks": tasks, "limit": int(limit) or None}}
    if template != "reference":  # the reference prompt is a job's default: a spec names only another
        base["prompt"] = {"template": template}
    axes = {"method": methods, "source": sources, "sparsity": sorted(sparsities), "seed": list(range(int(n_seeds)))}
    try:
        study = library.make_study(name, base, axes, max_runs=int(max_runs))
        plan = runner.plan(study, yes=confirm)
        library.save_study(study)
        launch(plan)
    except NSAError as err:
        st.error(str(err))
        return
    ui.set_params(study=study.name)
    st.session_state["study-next"] = study.name  # selected in the picker on the rerun
    st.rerun()


def launch(plan: runner.StudyPlan, executor=None) -> None:
    if plan.to_run:
        runner.submit(plan, executor=executor)


PAPER = ("Ding et al. (2025), \"Neuron Semantic Attribution\" (arXiv:2503.01542): pruning hurts sentiment "
         "classification more than other tasks, and the calibration set changes how much")


@st.fragment(run_every=3)
def live(name: str) -> None:
    """Progress, time elapsed and left, and the results so far: re-read every few seconds, so the curves fill in
    as runs finish (no reload)."""
    try:
        plan = runner.plan(library.find_study(name), yes=True)
        state = runner.progress(plan)
    except NSAError as err:
        st.error(str(err))
        return
    st.write(runner.plan_summary(plan))
    timing = runner.timing(plan)
    eta = f" · elapsed {_duration(timing['elapsed_s'])}" if timing["elapsed_s"] else ""
    if state.active and timing["left_s"] is not None:
        eta += f" · about {_duration(timing['left_s'])} left ({timing['per_run_s']:.0f} s per run so far)"
    st.progress(state.fraction, text=f"{state.summary()}{eta}" + (f" — {state.current}" if state.current else ""))
    for message in state.failures.values():
        st.warning(f"failed: {message}")
    if state.active and st.button("Stop the study", key="stop-study"):
        st.info(f"cancelled {runner.stop(plan)} runs; press Run to resume (finished runs are reused)")
    show_results(name, plan)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else \
        f"{seconds / 3600:.1f} h"


def show_results(name: str, plan) -> None:
    view = report.study_report(plan)
    if view.table.empty:
        st.info("No finished run yet: the table and plots appear here as runs finish.")
        return
    st.subheader("Accuracy vs sparsity")
    tasks = view.tasks
    task = st.selectbox("Task", tasks, index=tasks.index(view.default_task) if view.default_task in tasks else 0,
                        key="study-task")
    ui.chart(view.accuracy_figure(task), f"{name}-accuracy")
    if not view.breakpoints.empty:
        st.caption("Sharp dropping point: two-segment piecewise-linear fit of accuracy vs sparsity; the interval is "
                   "a Student-t 95% interval over seeds.")
        ui.table(view.breakpoints, f"{name}-breakpoints")
    st.subheader("The paper's findings on this study")
    st.caption(PAPER + ". Each verdict below is computed from this study's runs; a finding that does not hold here "
               "says so.")
    st.markdown("**Is the sentiment drop larger than the other tasks' drop?**")
    ui.chart(view.group_figure(), f"{name}-groups")
    _finding(view.group_effect, "sentiment vs others")
    below = sorted(set(view.table.loc[view.table["dense_above_chance"].eq(False), "task"]))  # None: not known
    if below:
        st.caption("The dense model does not beat the best constant guess on " + ", ".join(below) + " (one-sided "
                   "binomial test, 0.05): a drop there is noise. The same comparison without those tasks:")
        _finding(view.group_effect_competent, "sentiment-competent")
    st.markdown("**Does the calibration set change the drop?**")
    ui.chart(view.heatmap(), f"{name}-calibration")
    _finding(view.calibration_effect, "calibration")
    st.subheader("Results table")
    ui.table(view.table, f"{name}-results")


def _finding(frame, key: str) -> None:
    if frame.empty:
        st.info(f"Not available: {frame.attrs.get('note', 'no data')}")
        return
    for verdict in frame["verdict"]:
        st.markdown(f"- {verdict}")
    ui.table(frame.drop(columns=["verdict"]), f"finding-{key}")


def main() -> None:
    st.title("Study")
    st.caption("A grid of runs — methods × calibration sets × sparsities × seeds — through the same queue as the "
               "Run page, with the accuracy curves, the sharp dropping point and the two findings of " + PAPER + ".")
    studies = list(library.list_studies())
    current = st.query_params.get("study")
    choices = studies + ["➕ define a new study"]
    index = choices.index(current) if current in choices else 0
    if st.session_state.get("study-next") in choices:
        st.session_state["study-pick"] = st.session_state.pop("study-next")
    choice = st.selectbox("Study", choices, index=index, key="study-pick")
    if choice == choices[-1]:
        define_form()
        return
    ui.set_params(study=choice)
    try:
        study = library.find_study(choice)
    except NSAError as err:
        st.error(str(err))
        return
    with st.expander("Definition", expanded=False):
        st.code(library.dump_study(study), language="yaml")
    big = study.size > study.max_runs
    confirm = st.checkbox(f"Confirm {study.size} grid points (more than this study's limit of {study.max_runs})",
                          key="confirm-study") if big else False
    try:
        plan = runner.plan(study, yes=confirm)
    except NSAError as err:
        st.error(str(err))
        return
    if plan.to_run:
        executor = ui.executor_picker("study-")
        if st.button("Run the missing runs" if plan.finished else "Run", type="primary", key="run-study"):
            try:
                launch(plan, executor)
                st.caption("Queued: progress and results update below as runs finish.")
            except NSAError as err:
                st.error(str(err))
    live(choice)


ui.guarded(main)
