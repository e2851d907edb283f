"""Which stages of a damaged run folder are reused: a stage is reused only when its artifacts and inputs verify."""
from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

from nsa.atomic import write_json
from nsa.jobs import runs
from nsa.jobs.pipeline import plan_reuse, run_job, stage_keys, stages_for
from nsa.jobs.spec import parse_spec

ALL = {"calibration", "dense eval", "nsa dense", "prune", "neurons", "pruned eval", "comparison", "nsa"}


def _spec(stories_dir, **extra):
    return parse_spec({"model": str(stories_dir), "prune": {"method": "wanda", "sparsity": 0.5},
                       "calibration": {"source": "wikitext2", "nsamples": 4, "seqlen": 32},
                       "evaluate": {"tasks": ["sst2"], "limit": 8}, "nsa": {"task": "sst2", "limit": 8}, **extra})


def _folder(spec):
    """A run folder with every artifact a full job writes (contents are small but real files)."""
    entry = runs.run_entry(spec.id)
    with entry.build() as out:
        write_json(out / "spec.json", spec.to_dict())
        write_json(out / "calibration.json", {"source": "wikitext2", "nsamples": 4})
        save_file({"model.layers.0.mlp.down_proj.weight": torch.zeros(4, 8, dtype=torch.uint8)},
                  str(out / "masks.safetensors"))
        write_json(out / "stats.json", {"sparsity": 0.5})
        (out / "neurons.parquet").write_bytes(b"PAR1")
        for part in ("dense", "pruned"):
            write_json(out / "eval" / part / "summary.json", {"tasks": {}})
            (out / "eval" / part / "sst2.jsonl").write_text('{"index": 0}\n')
        write_json(out / "eval" / "comparison.json", {"tasks": {}})
        write_json(out / "nsa" / "summary.json", {})
    return entry


def test_stages_follow_the_spec(stories_dir):
    assert [s.name for s in stages_for(_spec(stories_dir))] == ["calibration", "dense eval", "nsa dense", "prune",
                                                               "neurons", "pruned eval", "comparison", "nsa"]
    bare = _spec(stories_dir, evaluate=None, nsa=None, prune={"method": "magnitude"})
    assert [s.name for s in stages_for(bare)] == ["prune", "neurons"]


def test_reuse_only_what_verifies(cache, stories_dir):
    spec = _spec(stories_dir)
    entry = _folder(spec)
    assert set(plan_reuse(spec, entry)) == ALL
    (entry.folder / "eval" / "pruned" / "sst2.jsonl").write_text('{"index": 1}\n')  # same size, other content
    # NSA's pruned part reads the pruned records: it runs again, and with it the dense part it needs in memory
    assert set(plan_reuse(spec, entry)) == ALL - {"pruned eval", "comparison", "nsa", "nsa dense"}
    (entry.folder / "masks.safetensors").unlink()
    # everything that read the masks is recomputed; pruning needs the calibration set again
    assert set(plan_reuse(spec, entry)) == {"dense eval"}
    (entry.folder / "manifest.json").unlink()
    assert set(plan_reuse(spec, entry)) == set()


def test_nsa_options_reach_the_attribution(cache, stories_dir):
    """A job's nsa.options are what the NSA stage runs with (here: 4 words per class, no validation)."""
    spec = parse_spec({"model": str(stories_dir), "prune": {"method": "magnitude", "sparsity": 0.5},
                       "nsa": {"task": "sst2", "limit": 24,
                               "options": {"top_k": 4, "min_df": 2, "min_occurrences": 5, "validation": False,
                                           "label_at_chance": True}}})
    folder = run_job(spec)
    summary = json.loads((folder / "nsa" / "summary.json").read_text())
    assert summary["words"]["top_k"] == 4 and summary["words"]["n_words"] <= 8
    assert summary["validation"] == {}
    assert summary["matching"]["min_occurrences"] == 5


def test_adding_nsa_to_a_run_reuses_its_pruning_and_evaluations(cache, stories_dir):
    """A run made without NSA, then the same experiment with NSA: calibration, pruning, the neuron table and both
    evaluations come from the first run (verified copies under the same stage keys); only NSA is computed."""
    spec = {"model": str(stories_dir), "prune": {"method": "wanda", "sparsity": 0.5},
            "calibration": {"source": "wikitext2", "nsamples": 4, "seqlen": 32},
            "evaluate": {"tasks": ["sst2"], "limit": 24}}
    first = run_job(spec)
    with_nsa = parse_spec(spec | {"nsa": {"task": "sst2", "options": {"validation": False, "min_df": 2}}})
    keys = stage_keys(with_nsa)
    assert keys["prune"] == stage_keys(parse_spec(spec))["prune"] and keys["nsa"] != stage_keys(parse_spec(spec))["prune"]
    second = run_job(with_nsa)
    log = (second / "logs" / "job.log").read_text()
    for stage in ("calibration", "dense eval", "prune", "neurons", "pruned eval", "comparison"):
        assert f"stage {stage} reused from {first}" in log, stage
    assert "stage nsa\n" in log and (second / "nsa" / "summary.json").is_file()
    assert (second / "masks.safetensors").read_bytes() == (first / "masks.safetensors").read_bytes()
    assert runs.verify_run(with_nsa.id) == []
