"""Helpers of the page tests: render a page through app.py's navigation, read its figures and URL."""
from __future__ import annotations

import base64
import json

import numpy as np
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT

TIMEOUT = 60


def page(path: str, **params) -> AppTest:
    """Render one page through app.py's st.navigation (so page links resolve) with URL parameters."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    for k, v in params.items():
        at.query_params[k] = str(v)
    at.switch_page(path)
    return at.run()


def spec_of(at: AppTest, i: int = 0) -> dict:
    return json.loads(at.get("plotly_chart")[i].proto.spec)


def values(v) -> np.ndarray:
    """A plotly spec array: a plain list, or plotly's typed-array encoding {bdata, dtype, shape}."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
        return a.reshape([int(x) for x in str(v.get("shape", len(a))).split(",")]) if "shape" in v else a
    return np.asarray(v, dtype=float)


def qp(at: AppTest, key: str) -> str | None:
    value = at.query_params.get(key)
    return value[0] if isinstance(value, list) else value


def no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
