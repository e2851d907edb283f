"""Job specs: validation errors name the key path; normalisation makes equal experiments one id."""
from __future__ import annotations

import os
import time

import pytest

from nsa.datasets import register_custom_task, unregister_task
from nsa.errors import NSAError
from nsa.jobs.pipeline import stage_keys
from nsa.jobs.spec import load_spec, parse_spec


def _base(stories_dir) -> dict:
    return {"model": str(stories_dir), "prune": {"method": "wanda", "sparsity": 0.5},
            "calibration": {"source": "wikitext2", "nsamples": 4, "seqlen": 32},
            "evaluate": {"tasks": ["sst2"], "limit": 8}}


def test_normalised_spec_and_stable_id(stories_dir):
    a = parse_spec(_base(stories_dir))
    b = parse_spec({**_base(stories_dir), "prune": {"method": "WANDA", "sparsity": 0.5, "pattern": "unstructured",
                                                    "options": {}}, "device": "cuda"})
    assert a.id == b.id and len(a.id) == 16  # device is not part of what a run computes
    assert parse_spec(a.to_dict()).to_dict() == a.to_dict()  # normalising is idempotent
    assert a.calibration.seed == 0 and a.evaluate.tasks == ("sst2",) and a.dtype == "float32"
    other = parse_spec({**_base(stories_dir), "prune": {"method": "wanda", "sparsity": 0.6}})
    assert other.id != a.id
    defaults = parse_spec({**_base(stories_dir), "prune": {"method": "wanda", "options": {"group": "row"}}})
    assert defaults.id == a.id and a.prune.options == {"block_size": 128, "group": "row"}  # declared defaults
    pattern = parse_spec({**_base(stories_dir), "prune": {"method": "wanda", "pattern": " 2:4 "}})
    assert pattern.prune.pattern == "2:4"
    magnitude = parse_spec({**_base(stories_dir), "prune": {"method": "magnitude", "sparsity": 0.5}})
    assert magnitude.calibration is None  # magnitude reads no data: calibration does not split its runs
    assert magnitude.id == parse_spec({**_base(stories_dir), "calibration": {"seed": 3},
                                       "prune": {"method": "magnitude"}}).id


@pytest.mark.parametrize("change, path", [
    ({"extra": 1}, "extra"),
    ({"prune": {"method": "wanda", "sparsty": 0.5}}, "prune.sparsty"),
    ({"prune": {"method": "wanda", "sparsity": 1.5}}, "prune.sparsity"),
    ({"prune": {"method": "wanda", "sparsity": "half"}}, "prune.sparsity"),
    ({"prune": {"method": "wanda", "pattern": "4:2"}}, "prune.pattern"),
    ({"prune": {"method": "wanda", "options": [1]}}, "prune.options"),
    ({"prune": {"method": "wandaa"}}, "prune.method"),
    ({"prune": {"method": "wanda", "options": {"alpha": 1}}}, "prune.options.alpha"),
    ({"prune": {"method": "wanda", "options": {"group": "column"}}}, "prune.options.group"),
    ({"prune": {"method": "sparsegpt", "options": {"percdamp": "lots"}}}, "prune.options.percdamp"),
    ({"prune": {"sparsity": 0.5}}, "prune.method"),
    ({"prune": None}, "prune"),
    ({"calibration": {"source": "wikitext2", "nsamples": 0}}, "calibration.nsamples"),
    ({"calibration": {"source": "wikitext2", "seqlen": True}}, "calibration.seqlen"),
    ({"calibration": {"path": "/no/such/file.txt"}}, "calibration.path"),
    ({"calibration": {"source": "wikitext3"}}, "calibration.source"),
    ({"evaluate": {"tasks": []}}, "evaluate.tasks"),
    ({"evaluate": {"tasks": ["sst2", "no-such-task"]}}, "evaluate.tasks[1]"),
    ({"evaluate": {"tasks": ["sst2"], "limit": -1}}, "evaluate.limit"),
    ({"evaluate": {"tasks": ["sst2"], "limt": 3}}, "evaluate.limt"),
    ({"nsa": {"words": "learned"}}, "nsa.task"),
    ({"nsa": {"task": "sst2", "words": "nonsense"}}, "nsa.words"),
    ({"dtype": "float8"}, "dtype"),
    ({"device": "tpu"}, "device"),
    ({"model": ""}, "model"),
])
def test_bad_values_name_their_key(stories_dir, change, path):
    with pytest.raises(NSAError) as err:
        parse_spec({**_base(stories_dir), **change})
    assert str(err.value).startswith(f"{path}:"), str(err.value)


def test_not_a_mapping_and_yaml_files(tmp_path, stories_dir):
    with pytest.raises(NSAError, match="spec: expected a mapping"):
        parse_spec(["model"])
    with pytest.raises(NSAError, match="spec file not found"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(NSAError, match="not valid YAML"):
        load_spec(bad)
    good = tmp_path / "good.yaml"
    good.write_text(f"model: {stories_dir}\nprune: {{method: wanda, sparsity: 0.5}}\n"
                    "calibration: {source: wikitext2, nsamples: 4, seqlen: 32}\n")
    assert load_spec(good).id == parse_spec(_base(stories_dir) | {"evaluate": None}).id
    typo = tmp_path / "typo.yaml"
    typo.write_text(f"model: {stories_dir}\nprune: {{method: wanda, sparsity: 0.5}}\nevaluate: {{taks: [sst2]}}\n")
    with pytest.raises(NSAError, match=r"typo.yaml: evaluate.taks: unknown key"):
        load_spec(typo)


def test_a_model_retrained_in_the_same_folder_is_a_new_run(stories_dir, tmp_path):
    """The run id covers the model's files (content), not only its path: old results are never shown for new
    weights, and a file that was only touched keeps its runs."""
    import os
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(stories_dir, folder)
    spec = _base(stories_dir) | {"model": str(folder)}
    before = parse_spec(spec).id
    assert parse_spec(spec).id == before  # stable while the files are unchanged
    weights = folder / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert parse_spec(spec).id == before  # touched, same content: still the same run
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(weights))
    name = next(iter(tensors))
    tensors[name] = tensors[name] * 0.5  # "retrained": new weights in the same folder
    save_file(tensors, str(weights), metadata={"format": "pt"})
    assert parse_spec(spec).id != before


def test_nsa_options_are_checked_filled_and_part_of_the_id(stories_dir):
    base = _base(stories_dir) | {"nsa": {"task": "sst2"}}
    plain = parse_spec(base)
    assert plain.nsa.options["top_k"] == 20 and plain.nsa.options["validation"] is True  # defaults filled
    assert parse_spec(base | {"nsa": {"task": "sst2", "options": {"top_k": 20}}}).id == plain.id
    other = parse_spec(base | {"nsa": {"task": "sst2", "options": {"top_k": 5, "validation": False}}})
    assert other.id != plain.id and other.nsa.options["top_k"] == 5
    for options, message in (({"topk": 5}, "nsa.options.topk: unknown option for NSA"),
                             ({"alpha": 2}, "nsa.options.alpha: must be above 0 and below 1, got 2"),
                             ({"alpha": 0}, "nsa.options.alpha: must be above 0 and below 1, got 0"),
                             ({"seeds": 2}, "nsa.options.seeds: must be at least 20"),
                             ({"validation": "maybe"}, "nsa.options.validation: expected true or false")):
        with pytest.raises(NSAError, match=message):
            parse_spec(base | {"nsa": {"task": "sst2", "options": options}})


def test_nsa_uses_the_evaluations_example_set(stories_dir):
    """One run evaluates a task on one example set, shared by NSA: nsa.limit follows evaluate.limit, and a
    different explicit one is refused (it used to give a second, disagreeing evaluation of the same task)."""
    base = _base(stories_dir)
    assert parse_spec(base | {"nsa": {"task": "sst2"}}).nsa.limit == 8
    with pytest.raises(NSAError, match="nsa.limit: 400 differs from evaluate.limit 8 for task sst2"):
        parse_spec(base | {"nsa": {"task": "sst2", "limit": 400}})
    other = parse_spec(base | {"nsa": {"task": "imdb", "limit": 16}})
    assert other.eval_sets() == {"sst2": 8, "imdb": 16}  # NSA's own task is evaluated on its own set


def test_equal_computations_have_one_id_and_edited_inputs_a_new_one(stories_dir, tmp_path):
    """2:4 fixes the sparsity at 0.5 whatever was asked; a custom word list's content is part of the id."""
    base = _base(stories_dir)
    a = parse_spec(base | {"prune": {"method": "wanda", "pattern": "2:4", "sparsity": 0.5}})
    b = parse_spec(base | {"prune": {"method": "wanda", "pattern": "2:4", "sparsity": 0.7}})
    assert a.id == b.id and b.prune.sparsity == 0.5
    words = tmp_path / "words.json"
    words.write_text('{"negative": ["bad"], "positive": ["good"]}')
    first = parse_spec(base | {"nsa": {"task": "sst2", "words": str(words)}}).id
    words.write_text('{"negative": ["awful"], "positive": ["good"]}')
    assert parse_spec(base | {"nsa": {"task": "sst2", "words": str(words)}}).id != first


def test_a_custom_tasks_data_file_and_registration_are_part_of_the_id(stories_dir, tmp_path):
    """A spec names a custom task by the name it was registered under (`register_custom_task`, `nsa evaluate
    --custom`): its rows come from the file, so the id hashes the file's content. An edited file (one label
    flipped: same size) is a new run; the same rows written again are the same run. The same file registered
    again with other label names or another prompt computes something else too: a new run, whose stages are not
    reused from the old one."""
    data = tmp_path / "mine.csv"
    rows = "text,label\ngood film,1\nbad film,0\ngreat,1\nawful,0\n"
    stamp = [time.time_ns() - 10**10]

    def write(text: str) -> None:
        """Write the file as an editor would, a while after the last save (a new modification time)."""
        data.write_text(text)
        stamp[0] += 10**9
        os.utime(data, ns=(stamp[0], stamp[0]))

    write(rows)
    register_custom_task(data, ["negative", "positive"], name="mine-id")
    try:
        spec = _base(stories_dir) | {"evaluate": {"tasks": ["sst2", "mine-id"], "limit": 8}}
        first = parse_spec(spec).id
        assert parse_spec(spec).id == first
        write(rows.replace("bad film,0", "bad film,1"))
        flipped = parse_spec(spec).id
        write(rows + "dull,0\n")
        longer = parse_spec(spec).id
        write(rows)
        assert len({first, flipped, longer}) == 3 and parse_spec(spec).id == first
        keys = stage_keys(parse_spec(spec))
        register_custom_task(data, ["positive", "negative"], name="mine-id")
        swapped, swapped_keys = parse_spec(spec).id, stage_keys(parse_spec(spec))
        register_custom_task(data, ["negative", "positive"], name="mine-id", prompt="Review: {text}\nSentiment:")
        prompted = parse_spec(spec).id
        assert len({first, flipped, longer, swapped, prompted}) == 5
        assert swapped_keys["dense eval"] != keys["dense eval"] and swapped_keys["prune"] == keys["prune"]
    finally:
        unregister_task("mine-id")


@pytest.mark.parametrize("text, message", [
    ("model: demo\nmodel: demo\nprune: {method: wanda}\n", "key 'model' appears twice"),
    ("a: &a [1,1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
     "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n", "expands to far more data"),
    ("model: !!python/object/apply:os.system ['echo hi']\n", "not valid YAML"),
])
def test_dangerous_yaml_is_refused(tmp_path, text, message):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(NSAError, match=message):
        load_spec(path)


def test_non_utf8_and_huge_values_are_refused_with_short_messages(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"model: caf\xe9\nprune: {method: wanda}\n")
    with pytest.raises(NSAError, match="not UTF-8"):
        load_spec(path)
    with pytest.raises(NSAError) as err:
        parse_spec({"model": "x" * 100_000, "prune": {"method": "wanda"}})
    assert len(str(err.value)) < 300
