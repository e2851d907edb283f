"""NSA Lab dashboard: `streamlit run app.py`. A multipage app over `nsa`/`pruners`; pages only load and draw."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

import nsa  # noqa: F401  (offline switches for the HF hub)

ROOT = Path(__file__).resolve().parent

st.set_page_config(page_title="NSA Lab", layout="wide")

PAGES = [
    st.Page(str(ROOT / "pages" / "run.py"), title="Run", url_path="run", default=True),
    st.Page(str(ROOT / "pages" / "neurons.py"), title="Pruned neurons", url_path="neurons"),
    st.Page(str(ROOT / "pages" / "semantics.py"), title="Semantics", url_path="semantics"),
    st.Page(str(ROOT / "pages" / "accuracy.py"), title="Task accuracy", url_path="accuracy"),
    st.Page(str(ROOT / "pages" / "compare.py"), title="Compare", url_path="compare"),
]
if (ROOT / "pages" / "study.py").is_file():
    PAGES.append(st.Page(str(ROOT / "pages" / "study.py"), title="Study", url_path="study"))

st.session_state["nsa_app"] = True  # pages check it (see nsa.ui.guarded)
st.navigation(PAGES).run()
