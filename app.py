"""NSA Lab dashboard: `streamlit run app.py`. A multipage app over `nsa`/`pruners`; pages only load and draw.

Nothing here touches the network: the HF libraries are switched offline (when the hub is unreachable) in
`nsa.hub`, where a hub id is first resolved."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parent

st.set_page_config(page_title="NSA Lab", layout="wide")

PAGES = [
    st.Page(str(ROOT / "pages" / "run.py"), title="Run", url_path="run", default=True),
    st.Page(str(ROOT / "pages" / "neurons.py"), title="Pruned neurons", url_path="neurons"),
    st.Page(str(ROOT / "pages" / "semantics.py"), title="Semantics", url_path="semantics"),
    st.Page(str(ROOT / "pages" / "accuracy.py"), title="Task accuracy", url_path="accuracy"),
    st.Page(str(ROOT / "pages" / "compare.py"), title="Compare", url_path="compare"),
    st.Page(str(ROOT / "pages" / "study.py"), title="Study", url_path="study"),
]

st.session_state["nsa_app"] = True  # pages check it (see nsa_app.ui.guarded)
st.navigation(PAGES).run()
