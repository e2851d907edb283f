"""Neuron computations the page runs on demand with the run's model: output tokens (logit lens), top-activating
examples of any neuron, label quality, the export. The model and a run's masks are loaded once per server process
(`st.cache_resource`); one lock serialises the computations, because reading pruned activations applies the masks
to the shared model for a moment (`nsa.masks.masks_applied`)."""
from __future__ import annotations

import threading
from typing import Callable

import pandas as pd
import streamlit as st

from nsa import label_quality as LQ
from nsa import neuron_examples as NE
from nsa import neuron_export as NX
from nsa.logit_lens import top_tokens
from nsa.models import load_model

_LOCK = threading.Lock()


@st.cache_resource(show_spinner="loading the run's model (once per server)", max_entries=2)
def _model(model_id: str, dtype: str):
    return load_model(model_id, dtype=dtype)


@st.cache_resource(show_spinner=False, max_entries=4)
def _run(run_id: str) -> NE.RunInputs:
    return NE.run_inputs(run_id)


def model_of(run_id: str):
    run = _run(run_id)
    model, tokenizer = _model(run.model, run.spec.get("dtype", "float32"))
    return run, model, tokenizer


def output_tokens(run_id: str, layer: int, index: int, k: int = 10) -> dict:
    """`nsa.logit_lens.top_tokens` of the neuron, dense and with the run's mask."""
    run, model, tokenizer = model_of(run_id)
    with _LOCK:
        return top_tokens(model, tokenizer, layer, index, run.masks, run.weights, k)


def stored_examples(run_id: str, layer: int, index: int) -> dict | None:
    return NE.stored(run_id, layer, index)


def compute_examples(run_id: str, layer: int, index: int, progress: Callable | None = None) -> dict:
    run, model, tokenizer = model_of(run_id)
    with _LOCK:
        return NE.examples(model, tokenizer, run, layer, index, progress=progress)


def stored_quality(run_id: str) -> pd.DataFrame | None:
    return LQ.stored(run_id)


def compute_quality(run_id: str, progress: Callable | None = None) -> pd.DataFrame:
    run, model, tokenizer = model_of(run_id)
    with _LOCK:
        return LQ.quality(model, tokenizer, run, progress=progress)


def quality_method(run_id: str) -> str:
    return LQ.method_sentence(_run(run_id))


def with_quality(df: pd.DataFrame, run_id: str) -> pd.DataFrame:
    """The neuron table with the labels' detection AUC columns (empty until computed)."""
    quality = stored_quality(run_id)
    if quality is None:
        return df.assign(auc=float("nan"), auc_lo=float("nan"), auc_hi=float("nan"))
    return df.merge(quality[["layer", "index", "auc", "auc_lo", "auc_hi"]], on=["layer", "index"], how="left")


def export_bytes(run_id: str, suffix: str) -> bytes:
    """Every neuron of the run as `nsa neurons RUN --export FILE<suffix>` writes it."""
    run, model, tokenizer = model_of(run_id)
    with _LOCK:
        records = NX.export_records(run_id, model, tokenizer, run.masks, run.weights)
    return NX.export_text(records, suffix).encode("utf-8")


def progress_bar(text: str) -> Callable:
    """A Streamlit progress bar fed by `pruners.ProgressEvent`s."""
    bar = st.progress(0.0, text=text)
    return lambda event: bar.progress(min(1.0, max(0.0, float(event.fraction))), text=event.message or text)
