"""Bad inputs, table-driven: every one gets `error: <what was wrong and what to do>` and exit status 2 from the
command line (or an NSAError naming the field from a job spec) within seconds — never a traceback, a hang, or a
result that means something else. The categories are those of the adversarial probe in the issue tracker."""
from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import save_file

from nsa.cli import build_parser, main
from nsa.datasets import unregister_task
from nsa.errors import NSAError
from nsa.jobs.spec import load_spec, parse_spec
from nsa.jobs.store import JobStore
from nsa.jobs.submit import submit
from tests.conftest import SHARED, cpu_time

STORIES = str(SHARED / "models" / "stories260K")
REF = SHARED / "reference" / "tiny-llama"
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU: --device cuda is valid")
LOL = ", ".join(['"lol"'] * 10)
LAUGHS = ("description:\n  a: &a [" + LOL + "]\n"  # a billion laughs: 9 lists of 10, each of the one before
          + "".join(f"  {n}: &{n} [{', '.join(['*' + m] * 10)}]\n" for m, n in zip("abcdefgh", "bcdefghi")))


def _files(tmp):
    """Small bad files, written fresh for each case."""
    (tmp / "latin1.csv").write_bytes("text,label\ncaf\xe9 au lait,1\n".encode("latin-1"))
    (tmp / "bom.csv").write_bytes("\ufefftext,label\ngood film,1\nbad film,0\ngreat,1\nawful,0\n".encode("utf-8"))
    (tmp / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1") * 50)
    (tmp / "words_latin1.json").write_bytes('{"neg": ["caf\xe9"]}'.encode("latin-1"))
    (tmp / "words.txt").write_text("not a word list")
    (tmp / "empty.safetensors").write_bytes(b"")
    save_file({}, str(tmp / "nomasks.safetensors"))
    save_file({"input_ids": torch.zeros(2, 8, dtype=torch.long)}, str(tmp / "calib.safetensors"))
    (tmp / "a_file").write_text("x")
    pickled = tmp / "pickled"
    pickled.mkdir(exist_ok=True)
    (pickled / "config.json").write_text('{"model_type": "llama"}')
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04 not read")
    two = tmp / "two_gguf"
    two.mkdir(exist_ok=True)
    for name in ("a.gguf", "b.gguf"):
        (two / name).write_bytes(b"GGUF")
    (tmp / "fake.gguf").write_bytes(b"PK\x03\x04 not a gguf")
    (tmp / "bomb.yaml").write_text("name: bomb\n" + LAUGHS + "base: {model: demo, prune: {method: wanda}}\n"
                                   "axes: {sparsity: [0.3, 0.5]}\n")
    return tmp


P = ["prune", "--method", "wanda", "--calib-tokens", "{tmp}/calib.safetensors", "--out", "{tmp}/out"]
E = ["evaluate", "--model", STORIES, "--out", "{tmp}/out"]
A = ["attribute", "--model", STORIES, "--out", "{tmp}/out"]

CLI = [  # (argv, pattern the error line must match)
    (P + ["--model", "{tmp}/nope"], r"--model|does not exist"),
    (P + ["--model", "x" * 5000], r"5000 characters is not a path or a hub id"),
    (P + ["--model", "not a/valid id!"], r"neither an existing local path nor a hub id"),
    (P + ["--model", "{tmp}/pickled"], r"a pickle .* refuses"),
    (P + ["--model", "{tmp}/two_gguf"], r"2 GGUF files"),
    (P + ["--model", "{tmp}/fake.gguf"], r"not a GGUF file"),
    (P + ["--model", STORIES, "--sparsity", "1.5"], r"--sparsity: must be in \[0, 1\)"),
    (P + ["--model", STORIES, "--sparsity", "nan"], r"--sparsity: must be in \[0, 1\)"),
    (P + ["--model", STORIES, "--sparsity", "half"], r"--sparsity: expected a fraction"),
    (P + ["--model", STORIES, "--pattern", "4:2"], r"--pattern: expected 'unstructured' or 'N:M'"),
    (P + ["--model", STORIES, "--pattern", "2:0"], r"--pattern"),
    (P + ["--model", STORIES, "--method", "obs"], r"--method: unknown pruning method 'obs'"),
    (P + ["--model", STORIES, "--block-size", "2.5"], r"--block-size: expected an integer"),
    (P + ["--model", STORIES, "--group", "column"], r"--group: must be one of row, layer, block"),
    (P + ["--model", STORIES, "--percdamp", "0.1"], r"--percdamp: unknown option for method wanda"),
    pytest.param(P + ["--model", STORIES, "--device", "cuda"], r"--device: this machine has no CUDA GPU",
                 marks=NO_CUDA),
    (P + ["--model", STORIES, "--device", "cuda:99"], r"--device: .*(no CUDA GPU|'cuda:99' does not exist)"),
    (P + ["--model", STORIES, "--device", "banana"], r"--device: unknown device 'banana'"),
    (P + ["--model", STORIES, "--calib-device", "banana"], r"--calib-device: unknown device"),
    (P + ["--model", STORIES, "--seed", str(2 ** 70)], r"--seed .*must be in"),
    (P + ["--model", STORIES, "--nsamples", "0"], r"--nsamples 0: must be a positive integer"),
    (P + ["--model", STORIES, "--out", "{tmp}/a_file"], r"is a file: give a folder"),
    (P + ["--model", STORIES, "--out", "/proc/forbidden/out"], r"cannot write there"),
    (["prune", "--model", STORIES, "--method", "wanda", "--calibration", "wikitext2", "--nsamples", "100000000",
      "--seqlen", "32", "--out", "{tmp}/out"], r"calibration tokens is more than this tool takes"),
    (["prune", "--model", STORIES, "--method", "wanda", "--calibration", "wikitext2", "--nsamples", "2",
      "--seqlen", "5000", "--out", "{tmp}/out"], r"the model reads at most 512"),
    (["prune", "--model", STORIES, "--method", "wanda", "--out", "{tmp}/out"], r"needs calibration"),
    (["prune", "--model", STORIES, "--method", "wanda", "--calibration", "nope", "--out", "{tmp}/out"],
     r"unknown calibration source|no data"),
    (["prune", "--model", STORIES, "--method", "wanda", "--calibration", "file", "--out", "{tmp}/out",
      "--calib-tokens", "{tmp}/calib.safetensors"], r"either --calibration or --calib-tokens"),
    (E + ["--tasks", "sst2,nope"], r"unknown dataset/task 'nope'"),
    (E + ["--tasks", "sst2,sst2"], r"listed twice"),
    (E + ["--limit", "0"], r"limit must be a positive integer"),
    (E + ["--batch-size", "0"], r"--batch-size 0: must be a positive integer"),
    (E + ["--max-length", "0"], r"--max-length 0: must be a positive integer"),
    (E + ["--masks", "{tmp}/nope.safetensors"], r"--masks file .* does not exist"),
    (E + ["--masks", "{tmp}/nomasks.safetensors"], r"holds no masks"),
    (E + ["--masks", "{tmp}/empty.safetensors"], r"cannot read masks"),
    (E + ["--weights", "{tmp}/calib.safetensors"], r"--weights needs --masks"),
    pytest.param(E + ["--device", "cuda"], r"this machine has no CUDA GPU", marks=NO_CUDA),
    (E + ["--out", "{tmp}/a_file"], r"is a file: give a folder"),
    (E + ["--prompt", "no fields"], r"--prompt: 'no fields' is neither a preset"),
    (E + ["--num-fewshot", "-2"], r"--num-fewshot: expected an integer"),
    (E + ["--tasks", "imdb", "--num-fewshot", "2"], r"--num-fewshot: task 'imdb' has no training split"),
    (E + ["--custom", "{tmp}/latin1.csv"], r"is not UTF-8 text \(byte \d+, line 2"),
    (E + ["--custom", "{tmp}/a_file"], r"use .jsonl or .csv"),
    (A + ["--task", "arc_easy"], r"--task: NSA needs a labelled classification task"),
    (A + ["--task", "nope"], r"--task: unknown dataset/task 'nope'"),
    (A + ["--words", "{tmp}/words.txt"], r"--words: .*words.txt"),
    (A + ["--words", "{tmp}/words_latin1.json"], r"--words: .*not UTF-8"),
    (A + ["--seeds", "3"], r"--seeds: must be at least 20"),
    (A + ["--alpha", "0"], r"--alpha: must be above 0 and below 1"),
    (A + ["--top-k", "x"], r"--top-k: expected an integer"),
    (A + ["--validation", "maybe"], r"--validation: expected true or false"),
    (A + ["--limit", "-1"], r"--limit: must be a positive integer"),
    (["calibrate", "--model", STORIES, "--source", "file", "--path", "{tmp}/latin1.txt", "--nsamples", "1",
      "--seqlen", "8"], r"calibration file .* is not UTF-8"),
    (["run", "{tmp}/nope.yaml"], r"spec file not found"),
    (["submit", "{tmp}/a_file"], r"expected a mapping"),
    (["cancel", "zzzz"], r"no job with id 'zzzz'"),
    (["runs", "--delete", "../etc"], r"not a run id"),
    (["study", "{tmp}/nope.yaml"], r"study file .* does not exist"),
    (["study", "{tmp}/a_file", "--max-runs", "0"], r"--max-runs must be a positive integer"),
    (["study", "{tmp}/bomb.yaml"], r"bomb.yaml: the document expands to far more data than its text"),
]


@pytest.mark.parametrize("argv, pattern", CLI,
                         ids=[f"{i:02d}-{getattr(c, 'values', c)[0][0]}" for i, c in enumerate(CLI)])
def test_command_line_bad_input(argv, pattern, tmp_path, capsys):
    _files(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    start = cpu_time()
    assert main(args) == 2
    assert cpu_time() - start < 15
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines[-1].startswith("error: "), err[-2000:]
    assert re.search(pattern, lines[-1]), lines[-1]
    assert len(lines[-1]) < 2200  # an error never quotes a huge input whole
    assert not (tmp_path / "out" / "masks.safetensors").exists()


BASE = {"model": "demo", "prune": {"method": "wanda", "sparsity": 0.5},
        "calibration": {"source": "demo-generic", "nsamples": 4, "seqlen": 32}, "evaluate": {"tasks": ["sst2"]}}
SPECS = [  # (change to the base spec, the message's beginning)
    ({"model": "m" * 100_000}, "model: a model name of 100000 characters"),
    ({"model": 5}, "model: expected a non-empty string"),
    ({"device": "cuda:banana"}, "device: expected cpu, cuda, cuda:N or mps"),
    ({"prune": {"method": "wanda", "sparsity": -0.1}}, "prune.sparsity: must be in [0, 1)"),
    ({"prune": {"method": "wanda", "pattern": "structured?"}}, "prune.pattern: expected"),
    ({"prune": {"method": "wanda", "options": {"alpha": 1}}}, "prune.options.alpha: unknown option"),
    ({"prune": {"method": "ria", "options": {"alpha": "x"}}}, "prune.options.alpha: expected a number"),
    ({"calibration": {"source": "demo-generic", "nsamples": 100000000, "seqlen": 32}},
     "calibration.nsamples: 100000000 x 32"),
    ({"calibration": {"source": "demo-generic", "seed": 2 ** 40}}, "calibration.seed: must be in [0, 2^32)"),
    ({"evaluate": {"tasks": ["sst2"], "limit": 0}}, "evaluate.limit: must be a positive integer"),
    ({"nsa": {"task": "arc_easy"}}, "nsa.task: NSA needs a labelled classification task"),
    ({"nsa": {"task": "sst2", "words": "/etc/hostname"}}, "nsa.words:"),
    ({"nsa": {"task": "sst2", "limit": 10}, "evaluate": {"tasks": ["sst2"], "limit": 20}}, "nsa.limit: 10 differs"),
    ({"prompt": {"template": "{nope}"}}, "prompt.template: the template names nope"),
    ({"prompt": {"chat": "no"}}, "prompt.chat: expected true or false"),
]


@pytest.mark.parametrize("change, message", SPECS, ids=[str(i) for i in range(len(SPECS))])
def test_job_spec_bad_input(change, message):
    with pytest.raises(NSAError) as err:
        parse_spec(BASE | change)
    assert str(err.value).startswith(message), str(err.value)
    assert len(str(err.value)) < 600


@NO_CUDA
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_cuda_job_spec_is_refused_at_submit_on_a_machine_without_cuda(device, tmp_path, monkeypatch):
    """The spec parses (where a job runs is not what it computes), but `submit` checks the device for the local
    worker: queued, the job would wait its turn only to fail in the worker."""
    monkeypatch.setenv("NSA_CACHE_DIR", str(tmp_path / "cache"))
    store = JobStore()
    with pytest.raises(NSAError) as err:
        submit(BASE | {"device": device}, store, start_worker=False)
    assert str(err.value).startswith(f"device: this machine has no CUDA GPU for {device!r}"), str(err.value)
    assert str(err.value).endswith("use cpu") and store.list() == []


def test_a_csv_with_a_byte_order_mark_is_accepted(tmp_path, capsys):
    _files(tmp_path)
    try:
        assert main(["evaluate", "--model", STORIES, "--custom", str(tmp_path / "bom.csv"), "--tasks", "",
                     "--out", str(tmp_path / "o")]) == 0, capsys.readouterr().err
    finally:
        unregister_task("bom")
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["tasks"]["bom"]["n"] == 4


def test_a_yaml_spec_with_non_utf8_bytes_or_an_alias_bomb_is_refused(tmp_path):
    """Both are refused before the spec is parsed; the bomb (10^9 strings once expanded) within seconds, in a
    short message."""
    (tmp_path / "s.yaml").write_bytes(b"model: caf\xe9\nprune: {method: wanda}\n")
    with pytest.raises(NSAError, match="not UTF-8 text"):
        load_spec(tmp_path / "s.yaml")
    (tmp_path / "bomb.yaml").write_text("model: demo\nprune: {method: wanda}\n" + LAUGHS)
    start = cpu_time()
    with pytest.raises(NSAError, match="expands to far more data than its text") as err:
        load_spec(tmp_path / "bomb.yaml")
    assert cpu_time() - start < 5 and len(str(err.value)) < 2200


@pytest.mark.parametrize("command", sorted(build_parser()._subparsers._group_actions[0].choices))
def test_every_command_has_help(command, capsys):
    """`--help` of every command prints (an unescaped % in a help text used to crash `attribute --help`)."""
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0 and "usage:" in capsys.readouterr().out
