"""Which words label the neurons pruning damaged most (the third finding's first question).

NSA's step 3 records, for every labelled neuron, its mean activation on its own label words in the dense and the
pruned model (`nsa/neuron_shift.jsonl`). A neuron's damage is the share of that activation pruning took away,
`-shift_rel` (1.0: silent on its words after pruning; negative: pruning raised it). The most damaged neurons are
the top `share` of labelled neurons by damage (ties broken by layer, then index, so the set is reproducible).

A word "labels the damaged neurons" when it appears in their labels more often than among all labelled neurons:
for each word (and each cluster) the count among the damaged set is compared with a draw of as many neurons from
all labelled ones without replacement, a one-sided hypergeometric test, Benjamini-Hochberg q-values over the
words tested (those labelling at least `min_neurons` neurons). Counting labels, not tokens: a neuron labelled
"negative: bad, dull" counts once for "bad" and once for "dull".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from nsa.artifacts import read_jsonl
from nsa.errors import NSAError
from nsa.jobs.runs import run_artifact
from nsa.matching import benjamini_hochberg

WORD_COLUMNS = ["word", "cluster", "n_damaged", "n_labelled", "enrichment", "p_value", "q_value"]
CLUSTER_COLUMNS = ["cluster", "n_damaged", "n_labelled", "share_damaged", "share_labelled", "enrichment", "p_value"]


@dataclass(frozen=True)
class DamageConfig:
    """`share`: fraction of labelled neurons called most damaged; `min_neurons`: words labelling fewer neurons
    are listed but not tested (a count of 1 or 2 cannot be enriched significantly)."""
    share: float = 0.1
    min_neurons: int = 5

    def __post_init__(self):
        if not 0.0 < self.share < 1.0:
            raise NSAError(f"share {self.share}: the fraction of labelled neurons called most damaged must be "
                           "between 0 and 1 (e.g. 0.1 for the top 10%)")
        if self.min_neurons < 1:
            raise NSAError(f"min_neurons {self.min_neurons}: must be a positive integer")


@dataclass(frozen=True)
class DamageReport:
    config: DamageConfig
    n_labelled: int       # labelled neurons with a recorded shift
    n_damaged: int        # the most damaged of them
    damage_cutoff: float  # the least damage inside the set (share of label-word activation lost)
    mean_damage: float    # over the damaged set
    words: pd.DataFrame   # WORD_COLUMNS, most enriched significant first
    clusters: pd.DataFrame  # CLUSTER_COLUMNS

    def sentence(self, top: int = 8) -> str:
        """One line a reader can quote: which words are over-represented among the damaged neurons."""
        sig = self.words[self.words["q_value"] < 0.05].head(top)
        head = (f"The {self.n_damaged} most damaged of {self.n_labelled} labelled neurons (top "
                f"{self.config.share:.0%}, each lost at least {self.damage_cutoff:.0%} of its activation on its words)")
        if sig.empty:
            return head + ": no label word is over-represented among them (q < 0.05)."
        words = ", ".join(f"{r.word} ({r.cluster}, ×{r.enrichment:.1f})" for r in sig.itertuples())
        return head + f" are labelled by these words more often than labelled neurons overall: {words}."


def damaged_words(shift: list[dict] | pd.DataFrame, config: DamageConfig = DamageConfig(),
                  word_classes: dict[str, str] | None = None) -> DamageReport:
    """The report for one run's `neuron_shift` records (see the module docstring). A word's `cluster` is its class
    in the run's word list (`word_classes`, from `nsa/words.jsonl`); without one, the cluster of most labels that
    name it (a word of one class often labels "mixed" neurons, so the two can differ)."""
    df = pd.DataFrame(shift)
    if df.empty or "shift_rel" not in df:
        raise NSAError("no labelled neuron has an activation shift: the run has no NSA pruned part (NSA without "
                       "masks, or nothing was labelled)")
    df = df[np.isfinite(df["shift_rel"].astype(float))].copy()
    df["damage"] = -df["shift_rel"].astype(float)
    df = df.sort_values(["damage", "layer", "index"], ascending=[False, True, True], ignore_index=True)
    n = len(df)
    k = max(1, int(round(config.share * n)))
    df["damaged"] = np.arange(n) < k
    return DamageReport(config, n, k, float(df["damage"].iloc[k - 1]), float(df["damage"].iloc[:k].mean()),
                        _word_table(df, k, config.min_neurons, word_classes), _cluster_table(df, k))


def run_damage(run_id: str, config: DamageConfig = DamageConfig()) -> DamageReport:
    """`damaged_words` for a run's `nsa/neuron_shift.jsonl`."""
    path = run_artifact(run_id, "nsa/neuron_shift.jsonl", required=False)
    if path is None:
        raise NSAError(f"run {run_id} has no NSA activation shifts: add NSA to the run (with pruning) to see which "
                       "neurons it damaged")
    words = run_artifact(run_id, "nsa/words.jsonl", required=False)
    classes = {r["word"]: r["cluster"] for r in read_jsonl(words)} if words is not None else None
    return damaged_words(read_jsonl(path), config, classes)


def _word_table(df: pd.DataFrame, k: int, min_neurons: int, word_classes: dict[str, str] | None) -> pd.DataFrame:
    long = df[["words", "cluster", "damaged"]].explode("words").rename(columns={"words": "word"}).dropna()
    # one row per word: its neurons overall and in the damaged set; the cluster its labels name most often
    counts = long.groupby("word").agg(n_labelled=("damaged", "size"), n_damaged=("damaged", "sum"),
                                      cluster=("cluster", lambda c: c.value_counts().index[0])).reset_index()
    if word_classes:
        counts["cluster"] = counts["word"].map(word_classes).fillna(counts["cluster"])
    n = len(df)
    counts["enrichment"] = (counts["n_damaged"] / k) / (counts["n_labelled"] / n)
    tested = counts["n_labelled"] >= min_neurons
    counts["p_value"] = np.where(tested, _hypergeom_upper(counts["n_damaged"], n, counts["n_labelled"], k), np.nan)
    counts["q_value"] = np.nan
    if tested.any():
        p = torch.tensor(counts.loc[tested, "p_value"].to_numpy(), dtype=torch.float64)
        counts.loc[tested, "q_value"] = benjamini_hochberg(p).numpy()
    counts["n_damaged"] = counts["n_damaged"].astype(int)
    order = counts.assign(_q=counts["q_value"].fillna(2.0)).sort_values(["_q", "enrichment", "word"],
                                                                         ascending=[True, False, True])
    return order[WORD_COLUMNS].reset_index(drop=True)


def _cluster_table(df: pd.DataFrame, k: int) -> pd.DataFrame:
    n = len(df)
    rows = []
    for cluster, part in df.groupby("cluster", sort=True):
        hit, total = int(part["damaged"].sum()), len(part)
        rows.append({"cluster": cluster, "n_damaged": hit, "n_labelled": total, "share_damaged": hit / k,
                     "share_labelled": total / n, "enrichment": (hit / k) / (total / n),
                     "p_value": float(_hypergeom_upper(pd.Series([hit]), n, pd.Series([total]), k)[0])})
    return pd.DataFrame(rows, columns=CLUSTER_COLUMNS)


def _hypergeom_upper(hits: pd.Series, n: int, marked: pd.Series, k: int) -> np.ndarray:
    """P(X >= hits), X ~ Hypergeometric(population n, `marked` successes, k draws)."""
    from scipy.stats import hypergeom

    return hypergeom.sf(np.asarray(hits) - 1, n, np.asarray(marked), k)
