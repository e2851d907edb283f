"""Shared page helpers: view state in the URL (`st.query_params`), readable errors with an offer to recompute,
run picker, CSV/HTML downloads, and the local-path allow list."""
from __future__ import annotations

import os
import runpy
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd
import streamlit as st

from nsa.datasets import get_task
from nsa.errors import NSAError
from nsa.jobs.executors import Executor, LocalExecutor, RayExecutor, cluster_status
from nsa.jobs.spec import JobSpec, parse_spec
from nsa.jobs.submit import Submission, submit
from nsa.jobs.worker import running_worker
from nsa.models import hub_suggestions, local_models, looks_local
from nsa.neuron_export import neutralise
from nsa.paths import DEMO_DATA_DIR, DEMO_MODEL_DIR, allowed_dirs, models_dir
from nsa_app.figures import to_html, to_png
from nsa_app.results import ArtifactError, dense_vs_chance, run_label, runs_table, spec
from pruners import PruneError

PAGE_SIZES = (25, 50, 100)


# --- URL state ---------------------------------------------------------------------------------------------
def param(name: str, default: Any = None, cast: Callable = str, valid: Callable[[Any], bool] | None = None) -> Any:
    """A query parameter cast to `cast`, or `default` when absent, malformed, too long, or not `valid` (a link
    edited by hand never reaches a widget with a value it refuses)."""
    raw = st.query_params.get(name)
    if raw is None or raw == "" or len(raw) > 200:
        return default
    try:
        value = cast(raw)
    except (TypeError, ValueError, OverflowError):
        return default
    if cast is float and value != value:  # NaN
        return default
    return value if valid is None or valid(value) else default


def set_params(**values: Any) -> None:
    """Update the URL: None removes a key. Only writes when something changed (no needless reruns)."""
    for key, value in values.items():
        if value is None:
            if key in st.query_params:
                del st.query_params[key]
        elif st.query_params.get(key) != str(value):
            st.query_params[key] = str(value)


# --- errors ------------------------------------------------------------------------------------------------
def show_error(err: BaseException) -> None:
    """A readable message; artifacts that a re-run would rebuild get a Recompute button; unexpected errors keep
    their traceback folded in an expander, never as the main content."""
    known = isinstance(err, (NSAError, PruneError))
    st.error(str(err) if known else f"Something went wrong: {type(err).__name__}: {err}")
    if isinstance(err, ArtifactError) and err.recompute and err.artifact != "run folder":
        if st.button("Recompute this run", key=f"recompute-{err.run_id}-{err.artifact}"):
            try:
                submit_rerun(err.run_id)
                st.success("Re-submitted: the Run page shows its progress.")
            except Exception as sub_err:  # noqa: BLE001 - shown to the user
                st.error(f"could not re-submit: {sub_err}")
    if not known:
        with st.expander("Details"):
            st.code("".join(traceback.format_exception(err)), language="text")


def submit_rerun(run_id: str) -> Submission:
    """Recompute a run whose artifacts failed verification (the artifacts that still verify are reused)."""
    return submit(spec(run_id))


def guarded(body: Callable[[], None]) -> None:
    """Run a page body; any error becomes a readable message.

    The first session after the server starts may open a page URL (a copied link) before `app.py` has ever
    run: Streamlit then runs `pages/<name>.py` on its own, with the `pages/` folder as navigation and no page
    config. Such a run hands over to `app.py`, whose navigation runs the same page properly.
    """
    if not st.session_state.get("nsa_app"):
        runpy.run_path(str(Path(__file__).resolve().parent.parent / "app.py"), run_name="__main__")
        return
    st.session_state["page-figures"] = {}
    try:
        body()
    except Exception as err:  # noqa: BLE001 - the page must never show a bare traceback (st.stop/rerun are
        show_error(err)       # BaseExceptions and pass through)
    figures_download()


def has_nsa(run_id: str) -> bool:
    """The run asked for NSA; when it did not, the page says so and offers to add it (one click: a job with the
    same spec plus NSA, which reuses this run's pruning and evaluations and computes only NSA)."""
    spec_ = spec(run_id)
    if spec_.get("nsa"):
        return True
    tasks = [t for t in (spec_.get("evaluate") or {}).get("tasks") or [] if get_task(t).kind == "classification"]
    st.info("This run did not ask for neuron semantic attribution (NSA).")
    if not tasks:
        st.caption("It evaluated no classification task to attribute: launch a run with NSA from the Run page.")
        return False
    task = st.selectbox("Add NSA on", tasks, key=f"add-nsa-task-{run_id}")
    if st.button("Add NSA to this run", key=f"add-nsa-{run_id}", type="primary"):
        sub = submit_checked({**spec_, "nsa": {"task": task}})
        st.success(f"{sub.message}: it reuses this run's pruning and evaluations and computes NSA only. "
                   f"Its results open here when it finishes.")
        st.page_link("pages/run.py", label="Follow it on the Run page")
        set_params(run=sub.run_id)
    return False


def chance_banner(summary: dict) -> None:
    """A warning on every page that interprets a task when the dense model does not do that task."""
    chance = summary.get("dense_vs_chance") or {}
    if chance and not chance.get("above_chance", True):
        st.warning(f"The dense model is not significantly above chance on {summary.get('task')}: accuracy "
                   f"{chance['accuracy']:.3f} over {chance['n']} examples vs {chance['chance']:.3f} for always "
                   f"answering the commonest class (p = {chance['p_value']:.2f}, exact binomial test). Labels, "
                   "flips and drops on this task describe noise; NSA labels nothing here unless asked "
                   "(label_at_chance).")


def dense_chance_banners(pairs: Iterable[tuple[str, str]]) -> None:
    """`chance_banner` for each (run, task) whose dense model is at chance, from the run's dense evaluation
    records (`results.dense_vs_chance`, the Accuracy table's check): pages that show tasks without NSA's summary.
    Runs that share a dense result (one model on the same examples) are flagged once."""
    seen = set()
    for run_id, task in pairs:
        chance = dense_vs_chance(run_id, task)
        key = (task, tuple(sorted((chance or {}).items())))
        if key not in seen:
            seen.add(key)
            chance_banner({"task": task, "dense_vs_chance": chance})


# --- runs --------------------------------------------------------------------------------------------------
def pick_run(label: str = "Run", key: str = "run") -> str | None:
    """Selectbox of complete runs, kept in the URL as `?run=`; None (with a hint) when there is none."""
    runs = runs_table()
    if runs.empty:
        st.info("No finished run yet: launch one on the Run page.")
        return None
    ids = runs["run_id"].tolist()
    current = param(key)
    if current and current not in ids:
        st.warning(f"run {current} from the link is not in this cache; showing the newest run instead.")
        current = None
    chosen = st.selectbox(label, ids, index=ids.index(current) if current else 0, format_func=run_label,
                          key=f"pick-{key}")
    set_params(**{key: chosen})
    return chosen


# --- downloads ---------------------------------------------------------------------------------------------
def table(df: pd.DataFrame, name: str, help: dict[str, str] | None = None, links: dict[str, str] | None = None,
          **kwargs: Any) -> Any:
    """A dataframe (numbers rounded for reading, columns explained by `help`; `links`: {column of URLs: text shown
    for each}) with a CSV download of exactly what is shown, formula-injection safe."""
    config = {col: st.column_config.NumberColumn(col, format="%.3e", help=(help or {}).get(col))
              for col in df.columns if _tiny_or_huge(df[col])}  # p-values shown as 2.000e-45, not 0.0000…0002
    config |= {col: st.column_config.Column(col, help=text) for col, text in (help or {}).items()
               if col in df and col not in config}
    config |= {col: st.column_config.LinkColumn(col, display_text=text) for col, text in (links or {}).items()}
    out = st.dataframe(readable(df), hide_index=True, column_config=config or None, **kwargs)
    st.download_button("Download CSV", safe_csv(df).encode(), file_name=f"{name}.csv", mime="text/csv",
                       key=f"csv-{name}", on_click="ignore")
    return out


def _tiny_or_huge(column: pd.Series) -> bool:
    """A float column whose values need scientific notation to be read (some nonzero |v| < 1e-3 or ≥ 1e6)."""
    if not pd.api.types.is_float_dtype(column):
        return False
    magnitudes = column.abs()[column.notna() & (column != 0)]
    return bool(len(magnitudes)) and bool((magnitudes < 1e-3).any() or (magnitudes >= 1e6).any())


def readable(df: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """Floats to `digits` significant digits and lists as comma-separated text: no raw Python reprs on a page."""
    out = df.copy()
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col]):
            out[col] = out[col].map(lambda v: v if v != v else float(f"{v:.{digits}g}"))
        elif _texty(out[col]):
            out[col] = out[col].map(_cell)
    return out


def _texty(column: pd.Series) -> bool:
    """Object or string columns (pandas 3 gives text its own dtype)."""
    return column.dtype == object or pd.api.types.is_string_dtype(column)


def _cell(value: Any) -> Any:
    if isinstance(value, (list, tuple)) or (hasattr(value, "tolist") and not isinstance(value, str)):
        items = value.tolist() if hasattr(value, "tolist") else value
        return ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in items)
    if isinstance(value, float):
        return float(f"{value:.4g}")
    return value


def safe_csv(df: pd.DataFrame) -> str:
    """CSV text in which a text cell starting like a spreadsheet formula is prefixed with ' (numbers untouched)."""
    out = df.copy()
    for col in out.columns:
        if _texty(out[col]):
            out[col] = out[col].map(neutralise)
    return out.to_csv(index=False)


def chart(fig: Any, name: str) -> None:
    """A plotly chart with a one-click PNG beside it; every figure of the page also goes into the page's one
    HTML download (plotly.js embedded once, not per figure)."""
    st.plotly_chart(fig, key=f"fig-{name}", config={"displaylogo": False})
    st.session_state.setdefault("page-figures", {})[name] = fig
    st.download_button("PNG", lambda: png_or_explain(fig), file_name=f"{name}.png", mime="image/png",
                       key=f"png-{name}", on_click="ignore", help="a static image of this figure")


def png_or_explain(fig: Any) -> bytes:
    try:
        return to_png(fig)
    except Exception as err:  # noqa: BLE001 - kaleido needs a Chromium; without one the download says why
        return f"PNG export needs Chromium (apt-get install chromium) for plotly's kaleido: {err}".encode()


def figures_download() -> None:
    """One HTML file with every figure shown on this page."""
    figs = st.session_state.get("page-figures") or {}
    if figs:
        st.download_button(f"Download the page's {len(figs)} figure{'s' if len(figs) > 1 else ''} (HTML)",
                           lambda: to_html(figs), file_name="nsa-lab-figures.html", mime="text/html",
                           key="html-all-figures", on_click="ignore")


# --- local paths and the model picker --------------------------------------------------------------------
def check_local_path(text: str, what: str = "path") -> Path:
    """Resolve a user-typed path; NSAError (a sentence, never a traceback) unless it lies inside a folder the app
    may read (`nsa.paths.allowed_dirs`)."""
    path = Path(text).expanduser().resolve()
    roots = allowed_dirs()
    for root in roots:
        if path == root or root in path.parents:
            return path
    where = ", ".join(map(str, roots)) or "none"
    raise NSAError(f"{what} {text!r} is outside the folders this app may read ({where}); put it under one of "
                   "them, or add its folder to NSA_ALLOWED_DIRS (or NSA_MODELS_DIR) before starting the app")


def checked_spec(spec_dict: dict) -> JobSpec:
    """The spec parsed once, with every local path it names checked against the allowed folders: the model, a
    calibration file, a word list and custom data, however the page named them."""
    spec = parse_spec(spec_dict)
    for field, path in spec.local_paths():
        check_local_path(str(path), field)
    return spec


def submit_checked(spec_dict: dict, executor: Executor | None = None) -> Submission:
    return submit(checked_spec(spec_dict), executor=executor)


def executor_picker(prefix: str = "") -> Executor:
    """Where new jobs run: this machine, or a Ray cluster when one is reachable (`RAY_ADDRESS`, or one started
    here with `ray start --head`), with its nodes and free resources. Asking takes about a second at most and
    is remembered a few seconds; no cluster is ever started from a page. A worker already running keeps its own
    executor (its queue is shared), which the caption says."""
    status = cluster_status(os.environ.get("RAY_ADDRESS"), timeout_s=1.0)
    worker = running_worker()
    busy = f" A {worker['executor']} worker is running now: new jobs join its queue." if worker else ""
    if not status.reachable:
        why = ("no Ray cluster runs on this machine and RAY_ADDRESS is not set" if status.address is None
               else status.message)
        st.caption(f"Jobs run on this machine ({why}; start one with `ray start --head` to offer it here).{busy}")
        return LocalExecutor()
    choices = ["this machine", f"Ray cluster at {status.address}"]
    choice = st.radio("Run jobs on", choices, horizontal=True, key=f"{prefix}executor",
                      help="the Ray executor runs each job as a Ray task on a node of the cluster (docs/jobs.md)")
    st.caption(f"Ray cluster: {status.message}.{busy}")
    return LocalExecutor() if choice == choices[0] else RayExecutor(address=status.address)


def demo_ready() -> bool:
    """The demo model and its data are built (`python -m nsa demo build`)."""
    return (DEMO_MODEL_DIR / "config.json").is_file() and (DEMO_DATA_DIR / "reviews_test.jsonl").is_file()


@dataclass(frozen=True)
class Start:
    """Where a new job's settings start for one kind of model: the Run page's and the Study page's defaults."""
    sparsity: float
    calibration: tuple[str, ...]  # the Run page starts on the first; a study sweeps them all
    tasks: tuple[str, ...]
    limit: int  # examples per task, 0 = all
    nsa_task: str
    prompt: str  # a template of `nsa.datasets.PRESETS`


STARTS = {
    # the demo's own synthetic sets; 70% is where its accuracy visibly falls (Wanda: 8-14 points, docs/demo.md);
    # all 400 reviews, as labels from 200 did not beat random ablation (docs/nsa.md)
    "demo": Start(sparsity=0.7, calibration=("demo-generic", "demo-reviews"), tasks=("demo-reviews", "demo-unseen"),
                  limit=0, nsa_task="demo-reviews", prompt="reference"),
    # a real model: the papers' usual 50% on C4; 200 SST-2 examples keep a 135M model's job within minutes on a
    # CPU; the "review" template, with which SmolLM2 scores 0.79 on SST-2 (0.555 with the reference prompt)
    "real": Start(sparsity=0.5, calibration=("c4",), tasks=("sst2",), limit=200, nsa_task="sst2", prompt="review"),
}


def model_kind(model: str) -> str:
    """The key of `STARTS` for a model picked by `model_input` (pages key their widgets by it too, so switching
    model restores that kind's defaults)."""
    return "demo" if model == "demo" else "real"


MODEL_KINDS = ("demo", "models folder", "local folder", "hub id")


def model_input(prefix: str = "") -> str:
    """The model picker of the Run and Study pages: the demo model (labelled synthetic), a model found in
    NSA_MODELS_DIR (transformers folders and GGUF files, with family and size), another local folder or .gguf
    file inside the allowed folders, or a hub id (well-known small models suggested, cached ones marked)."""
    kind = st.radio("Model", MODEL_KINDS, horizontal=True, key=f"{prefix}model-kind",
                    format_func=lambda k: {"demo": "demo (synthetic)", "models folder": "NSA_MODELS_DIR"}.get(k, k))
    if kind == "demo":
        st.caption("SYNTHETIC: a 4.2M-parameter Llama trained by this project on templated reviews and neutral "
                   "text (`demo-*` tasks and calibration sets are synthetic too). For learning the tool; its "
                   "numbers say nothing about real language models.")
        if not demo_ready():
            st.warning("The demo model is not built in this checkout: run `python -m nsa demo build`, or pick "
                       "another model.")
        return "demo"
    if kind == "models folder":
        found = [m for m in local_models() if m.kind != "demo"]
        if not found:
            st.info(f"No model found in NSA_MODELS_DIR ({models_dir() or 'not set'}): set it to a folder holding "
                    "transformers model folders or .gguf files, or pick another kind.")
            return ""
        labels = {m.model: m.label for m in found}
        choice = st.selectbox("Model", list(labels), format_func=labels.get, key=f"{prefix}model-local")
        if choice.lower().endswith(".gguf"):
            st.caption("A GGUF file is dequantized to float32 and converted once into the cache (about 20 s for "
                       "135M parameters); later runs load the converted folder in a second.")
        return choice
    if kind == "local folder":
        text = st.text_input("Model folder or .gguf file", key=f"{prefix}model-path",
                             help="inside the data, models or cache folder, or NSA_ALLOWED_DIRS")
        return str(check_local_path(text, "model")) if text.strip() else ""
    suggestions = hub_suggestions()
    st.caption("Suggested: " + "; ".join(f"{m.model} ({'cached' if m.available else 'needs a download'})"
                                          for m in suggestions))
    text = st.text_input("Hub id, e.g. HuggingFaceTB/SmolLM2-135M-Instruct (must be cached when offline)",
                         key=f"{prefix}model-hub").strip()
    if text and looks_local(text):  # a path typed where a hub id goes gets the same check as the folder field
        return str(check_local_path(text, "model"))
    return text
