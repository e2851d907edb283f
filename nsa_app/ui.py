"""Shared page helpers: view state in the URL (`st.query_params`), readable errors with an offer to recompute,
run picker, CSV/HTML downloads, and the local-path allow list."""
from __future__ import annotations

import os
import runpy
import traceback
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import streamlit as st

from nsa.errors import NSAError
from nsa.jobs.submit import Submission, submit
from nsa.paths import DEMO_DATA_DIR, DEMO_MODEL_DIR, cache_dir, data_dir
from nsa_app.figures import to_html
from nsa_app.results import ArtifactError, list_runs, run_label, spec
from pruners import PruneError

PAGE_SIZES = (25, 50, 100)


# --- URL state ---------------------------------------------------------------------------------------------
def param(name: str, default: Any = None, cast: Callable = str) -> Any:
    """A query parameter cast to `cast`, or `default` when absent or malformed."""
    raw = st.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except (TypeError, ValueError):
        return default


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
    try:
        body()
    except Exception as err:  # noqa: BLE001 - the page must never show a bare traceback (st.stop/rerun are
        show_error(err)       # BaseExceptions and pass through)


# --- runs --------------------------------------------------------------------------------------------------
def pick_run(label: str = "Run", key: str = "run") -> str | None:
    """Selectbox of complete runs, kept in the URL as `?run=`; None (with a hint) when there is none."""
    runs = list_runs()
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
def table(df: pd.DataFrame, name: str, **kwargs: Any) -> Any:
    """A dataframe with a CSV download of exactly what is shown."""
    out = st.dataframe(df, hide_index=True, **kwargs)
    st.download_button("Download CSV", df.to_csv(index=False).encode(), file_name=f"{name}.csv", mime="text/csv",
                       key=f"csv-{name}", on_click="ignore")
    return out


def chart(fig: Any, name: str) -> None:
    """A plotly chart with a standalone HTML download (plotly.js embedded; built only when clicked)."""
    st.plotly_chart(fig, key=f"fig-{name}", config={"displaylogo": False})
    st.download_button("Download HTML", lambda: to_html(fig), file_name=f"{name}.html", mime="text/html",
                       key=f"html-{name}", on_click="ignore")


# --- local paths -------------------------------------------------------------------------------------------
def allowed_dirs() -> list[Path]:
    """Folders a path typed into the app may point into: data, cache, and NSA_ALLOWED_DIRS (os.pathsep list)."""
    dirs = [data_dir(), cache_dir()]
    dirs += [Path(p) for p in os.environ.get("NSA_ALLOWED_DIRS", "").split(os.pathsep) if p.strip()]
    return [d.expanduser().resolve() for d in dirs if d is not None]


def check_local_path(text: str) -> Path:
    """Resolve a user-typed path; NSAError unless it lies inside an allowed folder."""
    path = Path(text).expanduser().resolve()
    for root in allowed_dirs():
        if path == root or root in path.parents:
            return path
    raise NSAError(f"{text!r} is outside the folders this app may read ({', '.join(map(str, allowed_dirs()))}); "
                   f"add its folder to NSA_ALLOWED_DIRS before starting the app")


def demo_ready() -> bool:
    """The demo model and its data are built (`python -m nsa demo build`)."""
    return (DEMO_MODEL_DIR / "config.json").is_file() and (DEMO_DATA_DIR / "reviews_test.jsonl").is_file()


def model_input(prefix: str = "") -> str:
    """The model picker of the Run and Study pages: the demo model (selected, labelled synthetic), a local
    folder (inside the allowed folders) or a hub id; widget keys start with `prefix`."""
    kind = st.radio("Model", ["demo", "local folder", "hub id"], horizontal=True, key=f"{prefix}model-kind",
                    format_func=lambda k: "demo (synthetic)" if k == "demo" else k)
    if kind == "demo":
        st.caption("SYNTHETIC: a 4.2M-parameter Llama trained by this project on templated reviews and neutral "
                   "text (`demo-*` tasks and calibration sets are synthetic too). For learning the tool; its "
                   "numbers say nothing about real language models.")
        if not demo_ready():
            st.warning("The demo model is not built in this checkout: run `python -m nsa demo build`, or pick a "
                       "local folder / hub id.")
        return "demo"
    if kind == "local folder":
        text = st.text_input("Model folder", key=f"{prefix}model-path",
                             help="Only folders inside the data or cache folder, or in NSA_ALLOWED_DIRS")
        return str(check_local_path(text)) if text else ""
    return st.text_input("Hub id (must be cached when offline)", key=f"{prefix}model-hub").strip()
