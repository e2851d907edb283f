"""Study file parsing: the good structure and every bad input the issue lists (with line numbers)."""
from __future__ import annotations

import pytest

from nsa.errors import NSAError
from nsa.study.spec import DEFAULT_MAX_RUNS, dump_study, load_study, parse_study
from tests.conftest import ROOT

GOOD = """\
name: tiny
max_runs: 50
base:
  model: demo
  prune: {method: wanda, sparsity: 0.5, pattern: unstructured}
  calibration: {source: demo-generic, nsamples: 4, seqlen: 32, seed: 0}
  evaluate: {tasks: [demo-reviews], limit: 10}
axes:
  methods: [magnitude, wanda]
  sparsity: [0.3, 0.5, 0.7]
  seed: [0, 1]
  prune.options.alpha: [1.0]
"""


def test_good_study_parses_axes_in_order_with_their_paths():
    study = parse_study(GOOD)
    assert study.name == "tiny" and study.max_runs == 50
    assert list(study.axes) == ["method", "sparsity", "seed", "prune.options.alpha"]  # alias resolved
    assert study.axis_paths["seed"] == ("calibration", "seed")
    assert study.axis_paths["prune.options.alpha"] == ("prune", "options", "alpha")
    assert study.size == 2 * 3 * 2 * 1
    assert study.base["evaluate"] == {"tasks": ["demo-reviews"], "limit": 10}
    again = parse_study(dump_study(study))
    assert again.axes == study.axes and again.base == study.base and again.max_runs == 50


def test_load_study_names_it_after_the_file(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(GOOD.replace("name: tiny\n", "").replace("max_runs: 50\n", ""))
    study = load_study(path)
    assert study.name == "sweep" and study.max_runs == DEFAULT_MAX_RUNS and study.path == str(path)


def test_shipped_demo_study_parses():
    study = load_study(ROOT / "studies" / "demo.yaml")
    assert set(study.axes["method"]) >= {"magnitude", "wanda", "sparsegpt"}
    assert study.axes["source"] == ["demo-generic", "demo-reviews"]
    assert min(study.axes["sparsity"]) == pytest.approx(0.3) and max(study.axes["sparsity"]) == pytest.approx(0.8)
    assert len(study.axes["seed"]) == 3


@pytest.mark.parametrize("text, expected", [
    ("", "empty"),
    ("base: {model: demo\naxes: {}\n", "line 2, column 5: the study file does not parse as YAML"),
    ("base:\n  model: demo\n\taxes: x\n", "line 3, column 1: the study file does not parse"),
    ("- base\n- axes\n", "line 1: a study must be a mapping"),
    ("base: {model: demo}\naxes: {method: [wanda]}\nsweep: 3\n", "line 3: unknown key 'sweep'"),
    ("base: {model: demo}\naxes:\n  sparsty: [0.5]\n", "line 3: unknown axis 'sparsty'"),
    ("base: {model: demo}\naxes:\n  foo.bar: [1]\n", "line 3: unknown axis 'foo.bar'"),
    ("base: {model: demo}\naxes:\n  sparsity: []\n", "line 3: axis 'sparsity' has no values"),
    ("base: {model: demo}\naxes:\n  seed:\n", "line 3: axis 'seed' has no values"),
    ("base: {model: demo}\naxes: {}\n", "`axes:` must map each axis"),
    ("base: {model: demo}\naxes: [method]\n", "`axes:` must map each axis"),
    ("axes: {method: [wanda]}\n", "missing `base:`"),
    ("base: {model: demo}\n", "missing `axes:`"),
    ("base: demo\naxes: {method: [wanda]}\n", "line 1: `base:` must be a mapping"),
    ("base: {model: demo}\naxes:\n  method: [wanda]\n  method: [magnitude]\n", "line 4: key 'method' appears twice"),
    ("base:\n  prune: {method: a, method: b}\naxes: {seed: [1]}\n", "line 2: key 'method' appears twice in prune"),
    ("base: {model: demo}\naxes:\n  seed: [1, 2, 1]\n", "axis 'seed' lists 1 twice"),
    ("base: {model: demo}\naxes:\n  seed: [1]\n  seeds: [2]\n", "line 4: axis 'seeds' sets the same field as 'seed'"),
    ("base: {model: demo}\naxes:\n  method: [{a: 1}]\n", "values must be plain values"),
    ("base: {model: demo}\naxes: {seed: [1]}\nmax_runs: -3\n", "line 3: `max_runs:` must be a positive integer"),
    ("base: {model: demo}\naxes: {seed: [1]}\nmax_runs: many\n", "`max_runs:` must be a positive integer"),
])
def test_bad_study_is_a_clear_error(text, expected):
    with pytest.raises(NSAError, match=None) as info:
        parse_study(text, source="S.yaml")
    assert expected in str(info.value), str(info.value)
    assert str(info.value).startswith("S.yaml")


def test_missing_study_file(tmp_path):
    with pytest.raises(NSAError, match="does not exist"):
        load_study(tmp_path / "nope.yaml")
