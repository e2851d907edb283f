"""The study page's figures (plotly), drawn from the results table and the breakpoint table.

- `accuracy_figure`: accuracy vs sparsity per method (mean over seeds, band = min..max over seeds), one panel per
  calibration source, the dense accuracy dashed in the dense role's colour, the sharp dropping point marked with its
  seed interval.
- `group_drop_figure`: mean drop per task group (sentiment vs the others) at each sparsity, one panel per method,
  error bars = standard deviation over runs and tasks.
- `calibration_heatmap`: mean drop (over seeds and tasks) for each calibration source × method, one panel per
  sparsity — the view of "the calibration set matters".
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from nsa.study.results import with_method_labels
from nsa_app.figures import ROLE_COLORS

# Methods and task groups get colours no role has (`figures.ROLE_COLORS`): blue is always the dense model and red
# the pruned one, on every page, so no method curve can be read as either.
PALETTE = [c for c in ("#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22", "#000000")
           if c not in ROLE_COLORS.values()]


def accuracy_figure(table: pd.DataFrame, breakpoints: pd.DataFrame | None = None, task: str | None = None):
    """Accuracy vs sparsity for `task` (default: the first sentiment task in the table)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    task = task or default_task(table)
    data = spread_uncalibrated(with_method_labels(table[table["task"] == task]))
    breakpoints = with_method_labels(breakpoints) if breakpoints is not None else None
    sources = _levels(data, "source")
    fig = make_subplots(rows=1, cols=max(len(sources), 1), shared_yaxes=True,
                        subplot_titles=[f"calibration: {s}" if s else "no calibration" for s in sources] or [""])
    methods = _levels(data, "method")
    for col, source in enumerate(sources, start=1):
        part = data[data["source"].fillna("") == source]
        for k, method in enumerate(methods):
            curve = part[part["method"] == method]
            if curve.empty:
                continue
            color = PALETTE[k % len(PALETTE)]
            stats = curve.groupby("sparsity")["accuracy"].agg(["mean", "min", "max", "count"]).reset_index()
            x = stats["sparsity"].tolist()
            fig.add_trace(go.Scatter(x=x + x[::-1], y=stats["max"].tolist() + stats["min"].tolist()[::-1],
                                     mode="lines", fill="toself", fillcolor=_rgba(color, 0.18),
                                     line={"width": 0},
                                     hoverinfo="skip", showlegend=False, name=f"{method} seed range",
                                     legendgroup=method), row=1, col=col)
            fig.add_trace(go.Scatter(x=x, y=stats["mean"], mode="lines+markers", name=method, legendgroup=method,
                                     showlegend=col == 1, line={"color": color},
                                     customdata=np.stack([stats["min"], stats["max"], stats["count"]], axis=-1),
                                     hovertemplate="sparsity %{x}<br>accuracy %{y:.3f} (seeds %{customdata[0]:.3f}"
                                                   "–%{customdata[1]:.3f}, n=%{customdata[2]})"), row=1, col=col)
            _mark_breakpoint(fig, breakpoints, task, method, source, stats, color, col)
        dense = part["dense_accuracy"].dropna()
        if not dense.empty:
            fig.add_hline(y=float(dense.mean()), line_dash="dash", line_color=ROLE_COLORS["dense"], row=1, col=col,
                          annotation_text="dense", annotation_position="bottom left")
    fig.update_xaxes(title_text="sparsity")
    fig.update_yaxes(title_text=f"accuracy on {task}", row=1, col=1)
    fig.update_yaxes(range=[0, 1.05])  # accuracies: the axis never runs past 1 (plotly pads a flat curve to 1.5)
    fig.update_layout(title=f"Accuracy vs sparsity on {task}<br><sup>band: range over seeds · ◆ sharp dropping "
                            "point with its 95% interval over seeds · dashed: dense</sup>",
                      legend_title_text="method", height=450)
    return fig


def group_drop_figure(table: pd.DataFrame):
    """Mean accuracy drop per task group at each sparsity, one panel per method."""
    import plotly.express as px

    data = with_method_labels(table).assign(group=table["group"].fillna("custom"))
    stats = (data.groupby(["method", "sparsity", "group"])["drop"].agg(["mean", "std", "count"]).reset_index()
             .rename(columns={"mean": "drop", "std": "sd"}))
    stats["sd"] = stats["sd"].fillna(0.0)
    groups = sorted(stats["group"].unique(), key=lambda g: (g != "sentiment", g))
    colors = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)}  # sentiment first: always the first
    fig = px.bar(stats, x="sparsity", y="drop", color="group", error_y="sd", facet_col="method", barmode="group",
                 category_orders={"group": groups, "method": _levels(data, "method")}, color_discrete_map=colors,
                 hover_data={"count": True}, labels={"drop": "accuracy drop (dense − pruned)"})
    fig.update_layout(title="Accuracy drop per task group (mean over runs and tasks; bars: ±1 sd)", height=400)
    return fig


def calibration_heatmap(table: pd.DataFrame, task: str | None = None):
    """Mean drop for calibration source × method, one panel per sparsity (all tasks unless `task`)."""
    import plotly.express as px

    data = spread_uncalibrated(with_method_labels(table if task is None else table[table["task"] == task]))
    sparsities = sorted(data["sparsity"].dropna().unique())
    sources, methods = _levels(data, "source"), _levels(data, "method")
    z = np.full((len(sparsities), len(sources), len(methods)), np.nan)  # [sparsity, source, method]
    means = data.assign(source=data["source"].fillna("")).groupby(["sparsity", "source", "method"])["drop"].mean()
    for (sp, src, meth), value in means.items():
        z[sparsities.index(sp), sources.index(src), methods.index(meth)] = value
    fig = px.imshow(z, facet_col=0, facet_col_wrap=min(len(sparsities), 6), x=methods, y=sources,
                    color_continuous_scale="Reds", zmin=min(0.0, float(np.nanmin(z))) if z.size else 0,
                    zmax=float(np.nanmax(z)) if z.size and np.isfinite(z).any() else 1, text_auto=".2f",
                    labels={"color": "drop", "x": "method", "y": "calibration"}, aspect="auto")
    for ann in fig.layout.annotations:  # facet titles "facet_col=0" -> "sparsity 0.3"
        if ann.text and ann.text.startswith("facet_col="):
            ann.text = f"sparsity {sparsities[int(ann.text.split('=')[1])]:g}"
    scope = f"on {task}" if task else "over all tasks"
    fig.update_layout(title=f"Accuracy drop by calibration set × method ({scope}, mean over seeds)", height=380)
    return fig


def spread_uncalibrated(table: pd.DataFrame) -> pd.DataFrame:
    """Runs without calibration data (magnitude) drawn under every calibration source of the study: the same
    run stands in each panel / heatmap row (the table itself keeps one row per run)."""
    if table.empty or "source" not in table:
        return table
    sources = [s for s in table["source"].dropna().unique() if s != ""]
    missing = table["source"].isna() | (table["source"] == "")
    if not sources or not missing.any():
        return table
    copies = [table[missing].assign(source=s) for s in sources]
    return pd.concat([table[~missing], *copies], ignore_index=True)


def default_task(table: pd.DataFrame) -> str | None:
    """The sentiment task (the paper's focus) evaluated on the most examples (its curve is the most precise; ties:
    the first in the table), else the first task."""
    if table.empty:
        return None
    sentiment = table[table["group"] == "sentiment"]
    if sentiment.empty:
        return str(table["task"].iloc[0])
    n = pd.to_numeric(sentiment["n"], errors="coerce").fillna(0)
    return str(sentiment.loc[n.idxmax(), "task"])


def _mark_breakpoint(fig, breakpoints, task, method, source, stats, color, col) -> None:
    import plotly.graph_objects as go

    if breakpoints is None or breakpoints.empty:
        return
    hit = breakpoints[(breakpoints["task"] == task) & (breakpoints["method"] == method)
                      & breakpoints["source"].fillna("").isin([source, ""])]
    if hit.empty:
        return
    row = hit.iloc[0]
    t = float(row["breakpoint"])
    y = float(np.interp(t, stats["sparsity"], stats["mean"]))
    lo, hi = row.get("ci_low"), row.get("ci_high")
    error = ({"type": "data", "symmetric": False, "array": [float(hi) - t], "arrayminus": [t - float(lo)],
              "color": color} if pd.notna(lo) and pd.notna(hi) else None)
    text = f"{method}: break at {t:.3f}" + (f" [{float(lo):.3f}, {float(hi):.3f}]" if error else " (one seed)")
    fig.add_trace(go.Scatter(x=[t], y=[y], mode="markers", marker={"symbol": "diamond", "size": 12, "color": color,
                                                                     "line": {"color": "black", "width": 1}},
                             error_x=error, name=f"{method} breakpoint", legendgroup=method, showlegend=False,
                             hovertemplate=text + "<extra></extra>"), row=1, col=col)


def _levels(data: pd.DataFrame, column: str) -> list:
    return list(dict.fromkeys(data[column].fillna("").tolist())) if column in data else []


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"
