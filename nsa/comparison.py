"""NSA step 3: dense vs pruned, on the same prompts.

The pruned model (masks applied, SparseGPT's updated weights when given) streams the same encoded prompts as
step 2 (`nsa.matching.stream`), giving the same running sums; everything here compares the two.

- Per labelled neuron (`neuron_shift`): mean activation on its label words (occurrence-weighted) dense and
  pruned, shift = pruned - dense (absolute) and shift / |dense| (relative); its selectivity on those words
  in both models (each against its own all-token mean/sd); the pruned model's top significant words (same
  test, same settings) and the label overlap = |dense top words in pruned top words| / |dense top words|;
  `label_survives` when overlap >= 0.5; pruned fraction in/out (`nsa.neurons.pruned_fractions`).
- Per word (`clusters` table, level "word"): activation lost = sum over the labelled neurons for which the
  word is significant of (dense mean - pruned mean) on that word; relative to the sum of |dense mean|.
  Per cluster: the same sums over its words.
- Per example (`flips`): examples whose correctness changed (dense right -> pruned wrong = "lost", the
  reverse = "gained"), from the evaluator's per-example records, with the influential words they contain and
  the neurons (any MLP neuron) whose mean activation on those words dropped most (dataset-level means: the
  loss is summed over the example's words).
"""
from __future__ import annotations

from nsa.matching import Matching


def neuron_shift(dense: Matching, pruned: Matching, fractions: dict[tuple[int, int], dict] | None) -> list[dict]:
    """One row per dense-labelled neuron: activation shift on its words, label survival, pruned fractions."""
    word_id = {w: k for k, w in enumerate(dense.words)}
    counts = dense.word_count
    pruned_top = {(r["layer"], r["index"]): r["words"] for r in pruned.labels}
    rows = []
    for lab in dense.labels:
        layer, n = lab["layer"], lab["index"]
        ks = [word_id[w] for w in lab["words"]]
        weights = [counts[k] for k in ks]
        total = sum(weights) or 1
        d_mean = sum(float(dense.stats[layer].mean[k, n]) * c for k, c in zip(ks, weights)) / total
        p_mean = sum(float(pruned.stats[layer].mean[k, n]) * c for k, c in zip(ks, weights)) / total
        d_sel = sum(float(dense.stats[layer].selectivity[k, n]) * c for k, c in zip(ks, weights)) / total
        p_sel = sum(float(pruned.stats[layer].selectivity[k, n]) * c for k, c in zip(ks, weights)) / total
        top = pruned_top.get((layer, n), [])
        overlap = len(set(lab["words"]) & set(top)) / len(lab["words"])
        frac = (fractions or {}).get((layer, n), {})
        rows.append({"layer": layer, "index": n, "label": lab["label"], "cluster": lab["cluster"],
                     "words": lab["words"], "dense_mean": d_mean, "pruned_mean": p_mean,
                     "shift_abs": p_mean - d_mean, "shift_rel": (p_mean - d_mean) / abs(d_mean) if d_mean else None,
                     "dense_selectivity": d_sel, "pruned_selectivity": p_sel, "pruned_words": top,
                     "label_overlap": overlap, "label_survives": overlap >= 0.5,
                     "frac_in": frac.get("frac_in"), "frac_out": frac.get("frac_out"),
                     "removed": bool(frac.get("removed", False))})
    return rows


def word_cluster_loss(dense: Matching, pruned: Matching) -> list[dict]:
    """Activation lost per word and per cluster, summed over the labelled neurons carrying each word."""
    import torch

    labelled = {}
    for lab in dense.labels:
        labelled.setdefault(lab["layer"], []).append(lab["index"])
    # a cluster's neuron count is its labelled neurons, each once (a neuron carries several of its words: summing
    # the word rows' counts counted it once per word, more neurons than the model has)
    labelled_in: dict[str, int] = {}
    for lab in dense.labels:
        labelled_in[lab["cluster"]] = labelled_in.get(lab["cluster"], 0) + 1
    rows, per_cluster = [], {}
    for k, word in enumerate(dense.words):
        lost = dense_sum = abs_sum = 0.0
        n_neurons = 0
        for layer, idx in labelled.items():
            idx_t = torch.tensor(idx, dtype=torch.long)
            carries = dense.significant[layer][k, idx_t]  # neurons for which this word is significant
            if not bool(carries.any()):
                continue
            sel = idx_t[carries]
            d = dense.stats[layer].mean[k, sel]
            p = pruned.stats[layer].mean[k, sel]
            lost += float((d - p).sum())
            dense_sum += float(d.sum())
            abs_sum += float(d.abs().sum())
            n_neurons += int(sel.numel())
        cluster = dense.clusters[k]
        row = {"level": "word", "name": word, "cluster": cluster, "n_neurons": n_neurons,  # carrying this word
               "occurrences": int(dense.word_count[k]), "dense_activation": dense_sum,
               "activation_lost": lost, "relative_lost": lost / abs_sum if abs_sum else None}
        rows.append(row)
        agg = per_cluster.setdefault(cluster, {"level": "cluster", "name": cluster, "cluster": cluster,
                                               "n_neurons": labelled_in.get(cluster, 0), "occurrences": 0,
                                               "dense_activation": 0.0, "activation_lost": 0.0, "_abs": 0.0,
                                               "n_words": 0})
        agg["occurrences"] += row["occurrences"]
        agg["dense_activation"] += dense_sum
        agg["activation_lost"] += lost
        agg["_abs"] += abs_sum
        agg["n_words"] += 1
    for agg in per_cluster.values():
        abs_sum = agg.pop("_abs")
        agg["relative_lost"] = agg["activation_lost"] / abs_sum if abs_sum else None
    return list(per_cluster.values()) + rows


def flips(dense_records: list[dict], pruned_records: list[dict], encoded, dense: Matching, pruned: Matching,
          labels_by_neuron: dict[tuple[int, int], str], texts: dict[int, str], top_n: int = 5) -> list[dict]:
    """Examples whose correctness changed, with their influential words and the neurons that lost most."""
    import torch

    d = {r["index"]: r for r in dense_records}
    p = {r["index"]: r for r in pruned_records}
    by_index = {e.index: e for e in encoded}
    word_id = {w: k for k, w in enumerate(dense.words)}
    cluster_of = dict(zip(dense.words, dense.clusters))
    loss = [dense.stats[layer].mean - pruned.stats[layer].mean for layer in range(len(dense.stats))]  # [K, N]
    rows = []
    for i in sorted(set(d) & set(p)):
        if d[i]["correct"] == p[i]["correct"]:
            continue
        words = by_index[i].words_present if i in by_index else []
        ks = [word_id[w] for w in words]
        neurons = []
        if ks:
            per_layer = [loss[layer][ks].sum(0) for layer in range(len(loss))]  # [N] per layer
            flat = torch.cat(per_layer)
            sizes = [t.numel() for t in per_layer]
            top = torch.topk(flat, min(top_n, flat.numel()))
            for value, pos in zip(top.values.tolist(), top.indices.tolist()):
                layer = 0
                while pos >= sizes[layer]:
                    pos -= sizes[layer]
                    layer += 1
                neurons.append({"layer": layer, "index": pos, "activation_lost": value,
                                "label": labels_by_neuron.get((layer, pos))})
        rows.append({"index": i, "direction": "lost" if d[i]["correct"] else "gained", "gold": d[i]["gold"],
                     "dense_prediction": d[i]["prediction"], "pruned_prediction": p[i]["prediction"],
                     "dense_loglik": d[i].get("loglik"), "pruned_loglik": p[i].get("loglik"),
                     "text": texts.get(i, ""), "words": words, "word_clusters": [cluster_of[w] for w in words],
                     "neurons": neurons})
    return rows


def accuracy(records: list[dict]) -> float | None:
    return sum(bool(r["correct"]) for r in records) / len(records) if records else None
