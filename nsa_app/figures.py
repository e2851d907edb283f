"""Plotly figure builders for the app's pages: each takes an already aggregated dataframe from `nsa.results`
(never raw per-weight data) so a figure for a 7B run stays a few kB."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

# One colour per role, on every page: dense is blue, pruned is red, random controls are grey.
ROLE_COLORS = {"dense": "#1f77b4", "pruned": "#d62728", "labelled neurons ablated": "#9467bd",
               "random neurons ablated": "#7f7f7f", "restored": "#2ca02c"}


def _layout(fig: go.Figure, title: str, height: int = 420) -> go.Figure:
    fig.update_layout(title=title, height=height, margin=dict(l=60, r=20, t=50, b=50), template="plotly_white")
    return fig


def sparsity_heatmap(matrix: pd.DataFrame) -> go.Figure:
    """Layers (y) × modules (x), coloured by the share of weights pruned."""
    fig = go.Figure(go.Heatmap(z=matrix.to_numpy(), x=[str(c) for c in matrix.columns],
                               y=[int(i) for i in matrix.index], zmin=0, zmax=1, colorscale="Viridis",
                               colorbar=dict(title="sparsity"),
                               hovertemplate="layer %{y}<br>%{x}<br>sparsity %{z:.3f}<extra></extra>"))
    fig.update_yaxes(title="layer", autorange="reversed")
    return _layout(fig, "Sparsity per layer and module", height=max(300, 18 * len(matrix) + 120))


def fraction_distribution(hist: pd.DataFrame) -> go.Figure:
    """Per layer, how many neurons lost which fraction of their weights (a layer × fraction count heatmap)."""
    mids = sorted(((hist["lo"] + hist["hi"]) / 2).round(4).unique())
    z = hist.assign(mid=((hist["lo"] + hist["hi"]) / 2).round(4)).pivot_table(
        index="layer", columns="mid", values="count", aggfunc="sum").reindex(columns=mids).fillna(0)
    fig = go.Figure(go.Heatmap(z=z.to_numpy(), x=mids, y=[int(i) for i in z.index], colorscale="Blues",
                               colorbar=dict(title="neurons"),
                               hovertemplate="layer %{y}<br>pruned fraction ≈ %{x:.2f}<br>%{z} neurons"
                                             "<extra></extra>"))
    fig.update_xaxes(title="per-neuron pruned fraction")
    fig.update_yaxes(title="layer", autorange="reversed")
    return _layout(fig, "Distribution of the per-neuron pruned fraction", height=max(300, 18 * len(z) + 120))


def mask_pattern(masks: dict[str, np.ndarray], width: int = 64) -> go.Figure:
    """One neuron's mask entries per weight, wrapped into rows of `width` (1 = pruned)."""
    fig = go.Figure()
    rows, labels = [], []
    for name, vec in masks.items():
        n = -(-len(vec) // width) * width
        padded = np.full(n, np.nan)
        padded[:len(vec)] = vec
        block = padded.reshape(-1, width)  # [rows, width]
        rows.append(block)
        labels += [f"{name.split('.')[-2]} {i * width}" for i in range(len(block))]
    z = np.vstack(rows) if rows else np.zeros((0, width))
    fig.add_trace(go.Heatmap(z=z, y=labels, colorscale=[[0, "#e8f0fe"], [1, "#d62728"]], zmin=0, zmax=1,
                             showscale=False, hovertemplate="%{y}+%{x}: %{z}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, "Mask pattern (red = pruned)", height=max(250, 6 * len(labels) + 100))


def activation_histogram(hist: dict) -> go.Figure:
    """Token activations of one neuron, dense vs pruned, on shared bins (from `nsa.neuron_examples.histogram`)."""
    edges = np.asarray(hist["edges"])
    mids, width = (edges[:-1] + edges[1:]) / 2, float(edges[1] - edges[0]) if len(edges) > 1 else 1.0
    fig = go.Figure([go.Bar(x=mids, y=hist[role], width=width, name=role, marker_color=ROLE_COLORS[role],
                            opacity=0.55, hovertemplate=f"{role}<br>activation ≈ %{{x:.3f}}<br>%{{y}} tokens"
                                                        "<extra></extra>") for role in ("dense", "pruned")])
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title="activation")
    fig.update_yaxes(title="tokens")
    return _layout(fig, f"Activation over {hist.get('n_tokens', 0)} tokens of the examples, dense vs pruned", 320)


def accuracy_bars(df: pd.DataFrame, color: str = "model", title: str = "Accuracy per task") -> go.Figure:
    """Grouped bars per task with 95% interval error bars."""
    fig = go.Figure()
    for name, part in df.groupby(color, sort=False):
        value = part["value"].astype(float)
        lo = (value - part["lo"].astype(float)).clip(lower=0)
        hi = (part["hi"].astype(float) - value).clip(lower=0)
        fig.add_trace(go.Bar(name=str(name), x=part["task"], y=value, marker_color=ROLE_COLORS.get(str(name)),
                             error_y=dict(type="data", array=hi.tolist(), arrayminus=lo.tolist()),
                             customdata=part[["group", "n"]].to_numpy(),
                             hovertemplate="%{x} (%{customdata[0]})<br>%{y:.3f} (n=%{customdata[1]})"
                                           "<extra></extra>"))
    fig.update_layout(barmode="group", yaxis_title="accuracy")
    return _layout(fig, title)


def neuron_word_heatmap(matrix: pd.DataFrame) -> go.Figure:
    """Selectivity (σ) of each top neuron on its significant words; blank = not significant for that neuron."""
    fig = go.Figure(go.Heatmap(z=matrix.to_numpy(dtype=float), x=list(matrix.columns), y=list(matrix.index),
                               colorscale="Viridis", zmin=0, colorbar=dict(title="selectivity (σ)"),
                               hoverongaps=False, hovertemplate="%{y} × %{x}: %{z:.2f} σ<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, "Top neurons × their significant words", height=max(300, 16 * len(matrix) + 140))


def cluster_loss(df: pd.DataFrame) -> go.Figure:
    part = df[df["level"] == "cluster"] if "level" in df else df
    fig = go.Figure(go.Bar(x=part["name"], y=part["activation_lost"],
                           hovertemplate="%{x}: %{y:.3f} lost<extra></extra>"))
    fig.update_layout(yaxis_title="Σ activation lost (dense − pruned)")
    return _layout(fig, "Activation lost per cluster after pruning", height=360)


def validation_bars(df: pd.DataFrame) -> go.Figure:
    """Accuracy drop when ablating the labelled neurons vs random neurons (mean ± std)."""
    return _ablation_bars(df, "", "accuracy drop (points)", "Validation: labelled vs random ablation")


def validation_margin_bars(df: pd.DataFrame) -> go.Figure:
    """Gold-margin drop (nats) when ablating the labelled neurons vs random neurons (mean ± std)."""
    return _ablation_bars(df, "margin_", "gold margin lost (nats)",
                          "Validation: confidence lost, labelled vs random ablation")


def _ablation_bars(df: pd.DataFrame, measure: str, y_title: str, title: str) -> go.Figure:
    """Grouped bars per cluster: labelled_<measure>drop beside random_<measure>drop_mean ± std."""
    fig = go.Figure()
    fig.add_trace(go.Bar(name="labelled neurons ablated", x=df["cluster"], y=df[f"labelled_{measure}drop"],
                         marker_color=ROLE_COLORS["labelled neurons ablated"]))
    fig.add_trace(go.Bar(name="random neurons ablated", x=df["cluster"], y=df[f"random_{measure}drop_mean"],
                         marker_color=ROLE_COLORS["random neurons ablated"],
                         error_y=dict(type="data", array=df[f"random_{measure}drop_std"].fillna(0).tolist())))
    fig.update_layout(barmode="group", yaxis_title=y_title)
    return _layout(fig, title, height=360)


def drop_bars(df: pd.DataFrame, title: str) -> go.Figure:
    """Accuracy drop (points) per task, one bar per run, each against its own dense baseline, with the paired
    95% interval; hover gives both accuracies and the number of examples."""
    fig = go.Figure()
    for run, part in df.groupby("run", sort=False):
        fig.add_trace(go.Bar(name=str(run), x=part["task"], y=part["drop"],
                             error_y=dict(type="data", array=(part["drop_hi"] - part["drop"]).tolist(),
                                          arrayminus=(part["drop"] - part["drop_lo"]).tolist()),
                             customdata=part[["dense", "pruned", "n"]].to_numpy(),
                             hovertemplate="%{x}: drop %{y:.1f} points<br>dense %{customdata[0]:.3f} → pruned "
                                           "%{customdata[1]:.3f} (n=%{customdata[2]})<extra></extra>"))
    fig.update_layout(barmode="group", yaxis_title="accuracy drop (points, dense − pruned)",
                      legend=dict(orientation="h", y=-0.25))
    return _layout(fig, title, height=440)


def loss_drop_scatter(df: pd.DataFrame) -> go.Figure:
    """Each run × cluster: relative activation lost on the cluster's words vs the run's accuracy drop."""
    fig = go.Figure()
    for cluster, part in df.groupby("cluster"):
        fig.add_trace(go.Scatter(x=part["relative_lost"], y=part["accuracy_drop"], mode="markers", name=str(cluster),
                                 text=part["run"], marker=dict(size=10),
                                 hovertemplate="%{text}<br>lost %{x:.1%} · drop %{y:.1f} pts<extra></extra>"))
    fig.update_layout(xaxis_title="relative activation lost on the cluster's words", xaxis_tickformat=".1%",
                      yaxis_title="accuracy drop (points)")
    return _layout(fig, "Cluster activation loss vs accuracy drop across runs", height=380)


def jaccard_lines(df: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    for module, part in df.groupby("module"):
        fig.add_trace(go.Scatter(x=part["layer"], y=part["jaccard"], mode="lines+markers", name=str(module)))
    fig.update_layout(xaxis_title="layer", yaxis_title="Jaccard of pruned weights", yaxis_range=[0, 1.02],
                      xaxis_dtick=1)
    return _layout(fig, "Mask overlap per layer", height=380)


def to_html(figures: dict[str, go.Figure], title: str = "NSA Lab figures") -> str:
    """One standalone HTML page holding every figure, with plotly.js embedded once (works offline)."""
    parts = [fig.to_html(include_plotlyjs=(i == 0), full_html=False) for i, fig in enumerate(figures.values())]
    heads = [f"<h2>{name}</h2>" for name in figures]
    body = "\n".join(h + p for h, p in zip(heads, parts))
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head><body>{body}</body></html>"


def to_png(fig: go.Figure) -> bytes:
    """The figure as a PNG (plotly's static export through kaleido, which drives the system's Chromium)."""
    return fig.to_image(format="png", width=1100, height=int(fig.layout.height or 450), scale=2)
