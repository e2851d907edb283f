"""`python -m nsa prune`: reproduces the reference masks; every bad input is a clear error, exit 2, fast."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from nsa.cli import main
from nsa.masks import apply_masks
from nsa.models import load_model
from tests.conftest import child_cpu, cpu_time

ROOT_ARGS = ["prune", "--method", "wanda", "--sparsity", "0.5"]


def _ref_args(reference_dir, out, *extra):
    return ["prune", "--model", str(reference_dir / "model"), "--calib-tokens",
            str(reference_dir / "calib.safetensors"), "--out", str(out), *extra]


@pytest.mark.parametrize("method,pattern,fname", [("wanda", "unstructured", "unstructured"),
                                                  ("sparsegpt", "2:4", "2of4"), ("ria", "unstructured", "unstructured")])
def test_cli_reproduces_reference(reference_dir, tmp_path, method, pattern, fname):
    out = tmp_path / "run"
    assert main(_ref_args(reference_dir, out, "--method", method, "--pattern", pattern, "--save-weights")) == 0
    masks = load_file(str(out / "masks.safetensors"))
    ref = load_file(str(reference_dir / "masks" / f"{method}__{fname}.safetensors"))
    same = sum(int((masks[k] == ref[k]).sum()) for k in ref) / sum(v.numel() for v in ref.values())
    assert set(masks) == set(ref) and same >= (0.999 if method == "sparsegpt" else 1.0)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["config"]["method"] == method and stats["config"]["pattern"] == pattern
    assert len(stats["layer_times_s"]) == 2 and "versions" in stats
    weights = load_file(str(out / "weights.safetensors"))
    assert set(weights) == set(masks)
    for k in masks:
        assert torch.all(weights[k][masks[k].bool()] == 0)


def test_cli_save_model_loads_pruned(stories_dir, tmp_path):
    calib = tmp_path / "calib.safetensors"
    save_file({"input_ids": torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))}, str(calib))
    out = tmp_path / "run"
    assert main(["prune", "--model", str(stories_dir), "--calib-tokens", str(calib), "--method", "magnitude",
                 "--group", "row", "--out", str(out), "--save-model"]) == 0
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    AutoTokenizer.from_pretrained(out / "model")
    masks = load_file(str(out / "masks.safetensors"))
    params = dict(model.named_parameters())
    for k, m in masks.items():
        assert torch.all(params[k][m.bool()] == 0)
        assert torch.all(m.sum(1) == m.shape[1] // 2)  # --group row took effect


def _calib_file(tmp_path, tensor):
    path = tmp_path / "c.safetensors"
    save_file({"input_ids": tensor}, str(path))
    return str(path)


def _no_layers_model(tmp_path):
    import transformers as tf
    cfg = tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=0, num_attention_heads=4,
                         vocab_size=1000)
    path = tmp_path / "nolayers"
    tf.LlamaForCausalLM(cfg).save_pretrained(path)
    return str(path)


BAD = {
    "missing_path": (lambda r, t: ["--model", str(t / "nope"), "--calib-tokens", str(r / "calib.safetensors")],
                     "does not exist"),
    "uncached_hub_id": (lambda r, t: ["--model", "nobody/not-a-cached-model", "--calib-tokens",
                                      str(r / "calib.safetensors")], "not in the local Hugging Face cache"),
    "sparsity_high": (lambda r, t: ["--model", str(r / "model"), "--calib-tokens", str(r / "calib.safetensors"),
                                    "--sparsity", "1.0"], r"--sparsity: must be in \[0, 1\)"),
    "sparsity_negative": (lambda r, t: ["--model", str(r / "model"), "--calib-tokens", str(r / "calib.safetensors"),
                                        "--sparsity", "-0.2"], r"--sparsity: must be in \[0, 1\)"),
    "n_ge_m": (lambda r, t: ["--model", str(r / "model"), "--calib-tokens", str(r / "calib.safetensors"),
                             "--pattern", "4:4"], "0 < N < M"),
    "d_in_not_divisible": (lambda r, t: ["--model", str(r / "model"), "--calib-tokens",
                                         str(r / "calib.safetensors"), "--pattern", "2:7"], "not divisible by M=7"),
    "shorter_than_seqlen": (lambda r, t: ["--model", str(r / "model"), "--calib-tokens",
                                          str(r / "calib.safetensors"), "--seqlen", "65"], "shorter than --seqlen"),
    "empty": (lambda r, t: ["--model", str(r / "model"), "--calib-tokens",
                            _calib_file(t, torch.zeros(0, 8, dtype=torch.long))], "non-empty"),
    "wrong_dtype": (lambda r, t: ["--model", str(r / "model"), "--calib-tokens",
                                  _calib_file(t, torch.zeros(2, 8, dtype=torch.float32))], "int64"),
    "out_of_vocab": (lambda r, t: ["--model", str(r / "model"), "--calib-tokens",
                                   _calib_file(t, torch.full((2, 8), 5000, dtype=torch.long))], "vocabulary"),
    "nsamples_zero": (lambda r, t: ["--model", str(r / "model"), "--calib-tokens", str(r / "calib.safetensors"),
                                    "--nsamples", "0"], "--nsamples 0: must be a positive integer"),
    "no_decoder_layers": (lambda r, t: ["--model", _no_layers_model(t), "--calib-tokens",
                                        str(r / "calib.safetensors")], "no decoder layers"),
    "unknown_method": (lambda r, t: ["--model", str(r / "model"), "--calib-tokens", str(r / "calib.safetensors"),
                                     "--method", "obs"], "flap, gblm, magnitude, ria, shortgpt, sparsegpt, wanda"),
    "foreign_option": (lambda r, t: ["--model", str(r / "model"), "--calib-tokens", str(r / "calib.safetensors"),
                                     "--percdamp", "0.1"], "--percdamp: unknown option for method wanda"),
    "no_calibration": (lambda r, t: ["--model", str(r / "model")], "needs calibration"),
    "bad_option_value": (lambda r, t: ["--model", str(r / "model"), "--calib-tokens", str(r / "calib.safetensors"),
                                       "--block-size", "0"], "--block-size: must be at least 1, got '0'"),
    "no_cuda": (lambda r, t: ["--model", str(r / "model"), "--calib-tokens", str(r / "calib.safetensors"),
                              "--device", "cuda"], "--device: this machine has no CUDA GPU"),
    "bad_device": (lambda r, t: ["--model", str(r / "model"), "--calib-tokens", str(r / "calib.safetensors"),
                                 "--device", "banana"], "--device: unknown device 'banana'"),
    "bad_calib_device": (lambda r, t: ["--model", str(r / "model"), "--calib-tokens", str(r / "calib.safetensors"),
                                       "--calib-device", "banana"], "--calib-device: unknown device 'banana'"),
    "out_is_a_file": (lambda r, t: ["--model", str(r / "model"), "--calib-tokens", str(r / "calib.safetensors"),
                                    "--out", str(r / "calib.safetensors")], "is a file: give a folder"),
    "huge_seed": (lambda r, t: ["--model", str(r / "model"), "--calib-tokens", str(r / "calib.safetensors"),
                                "--seed", str(2**70)], "--seed .*: must be in"),
    "huge_model_name": (lambda r, t: ["--model", "x" * 5000, "--calib-tokens", str(r / "calib.safetensors")],
                        "5000 characters is not a path or a hub id"),
    "owl_with_nm": (lambda r, t: ["--model", str(r / "model"), "--calib-tokens", str(r / "calib.safetensors"),
                                  "--sparsity-profile", "owl", "--pattern", "2:4"],
                    "--sparsity-profile: OWL layer-wise sparsity is not defined for N:M patterns"),
    "owl_lambda_range": (lambda r, t: ["--model", str(r / "model"), "--calib-tokens", str(r / "calib.safetensors"),
                                       "--sparsity-profile", "owl", "--owl-lambda", "0.6"],
                         "--owl-lambda: must be at least 0 and below 0.5, got '0.6'"),
    "unknown_profile": (lambda r, t: ["--model", str(r / "model"), "--calib-tokens", str(r / "calib.safetensors"),
                                      "--sparsity-profile", "lumpy"], "--sparsity-profile: unknown sparsity profile"),
    "magnitude_owl_without_calibration": (lambda r, t: ["--model", str(r / "model"), "--method", "magnitude",
                                                        "--sparsity-profile", "owl"],
                                          "magnitude with sparsity profile owl needs calibration"),
    "flap_with_nm": (lambda r, t: ["--model", str(r / "model"), "--calib-tokens", str(r / "calib.safetensors"),
                                   "--method", "flap", "--pattern", "2:4"], "--pattern: flap is a structured method"),
    "flap_every_head": (lambda r, t: ["--model", str(r / "model"), "--calib-tokens", str(r / "calib.safetensors"),
                                      "--method", "flap", "--structure", "AL-AM", "--sparsity", "0.9"],
                        "--sparsity: flap AL-AM at sparsity 0.9 would remove every"),
    "shortgpt_every_layer": (lambda r, t: ["--model", str(r / "model"), "--calib-tokens", str(r / "calib.safetensors"),
                                           "--method", "shortgpt", "--sparsity", "0.8"],
                             "--sparsity: sparsity 0.8 would remove every decoder layer"),
    "pickled_checkpoint": (lambda r, t: ["--model", _pickle_only_model(t), "--calib-tokens",
                                         str(r / "calib.safetensors")], "a pickle .* refuses"),
}


def _pickle_only_model(tmp_path) -> str:
    """A folder holding config.json and a pytorch_model.bin only (never loaded: the check reads names)."""
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    return str(folder)


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU: --device cuda is valid")


@pytest.mark.parametrize("case", [pytest.param(c, marks=NO_CUDA) if c == "no_cuda" else c for c in sorted(BAD)])
def test_bad_input(case, reference_dir, tmp_path, capsys):
    build, match = BAD[case]
    args = ROOT_ARGS + ["--out", str(tmp_path / "out")] + build(reference_dir, tmp_path)
    t0 = cpu_time()
    assert main(args) == 2
    assert cpu_time() - t0 < 5
    import re
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and re.search(match, last), err
    assert not (tmp_path / "out" / "masks.safetensors").exists()


def test_bad_input_subprocess_is_fast(tmp_path):
    """A fresh process (imports included: torch and transformers, 2-3 s) answers a bad sparsity and a missing
    folder within seconds."""
    for extra in (["--sparsity", "1.5", "--model", "x"], ["--model", str(tmp_path / "missing")]):
        t0 = child_cpu()
        proc = subprocess.run([sys.executable, "-m", "nsa", *ROOT_ARGS, *extra, "--out", str(tmp_path)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and proc.stderr.startswith("error: "), proc.stderr
        assert child_cpu() - t0 < 10


def test_cli_flap_saves_a_smaller_stock_model(stories_dir, tmp_path):
    """--save-model with flap writes OUT/model/ with fewer heads and channels, loadable without custom code; the
    run's masks + weights.safetensors (the compensation biases) on the dense model give the same logits."""
    from transformers import AutoModelForCausalLM
    calib = tmp_path / "calib.safetensors"
    save_file({"input_ids": torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(0))}, str(calib))
    out = tmp_path / "run"
    assert main(["prune", "--model", str(stories_dir), "--calib-tokens", str(calib), "--method", "flap",
                 "--sparsity", "0.5", "--out", str(out), "--save-model"]) == 0
    small = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32).eval()
    assert (small.config.num_attention_heads, small.config.num_key_value_heads, small.config.intermediate_size) \
        == (4, 2, 86)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["structured"]["shrinkable"] and stats["saved_model"]["params_after"] < stats["saved_model"]["params_before"]
    dense, _ = load_model(str(stories_dir))
    apply_masks(dense, load_file(str(out / "masks.safetensors")), load_file(str(out / "weights.safetensors")))
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(small(ids).logits, dense(ids).logits, atol=1e-5, rtol=0)


def test_cli_calibration_source(stories_dir, tmp_path):
    """--calibration goes through nsa.calibration.build_calibration (real c4 rows from ../shared/data)."""
    out = tmp_path / "run"
    assert main(["prune", "--model", str(stories_dir), "--method", "wanda", "--calibration", "c4",
                 "--nsamples", "2", "--seqlen", "32", "--out", str(out)]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["calibration"]["source"] == "c4" and stats["calibration_shape"] == [2, 32]


def test_cli_calibration_and_tokens_exclusive(reference_dir, tmp_path, capsys):
    assert main(_ref_args(reference_dir, tmp_path, "--method", "wanda", "--calibration", "c4")) == 2
    assert "not both" in capsys.readouterr().err


def test_cli_channel_permutation_writes_the_weights_the_masks_need(reference_dir, tmp_path):
    """RIA's permutation moves weights: the CLI writes weights.safetensors even without --save-weights, and
    masks + weights on a fresh copy of the dense model give exactly the pruned model's N:M weights."""
    out = tmp_path / "run"
    assert main(_ref_args(reference_dir, out, "--method", "ria", "--pattern", "2:4",
                          "--channel-permutation", "true")) == 0
    masks = load_file(str(out / "masks.safetensors"))
    weights = load_file(str(out / "weights.safetensors"))
    assert set(masks) <= set(weights)
    stats = json.loads((out / "stats.json").read_text())
    assert any(rec.get("applied") for rec in stats["channel_permutation"].values())
    model, _ = load_model(str(reference_dir / "model"))
    apply_masks(model, masks, weights)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        groups = mask.reshape(mask.shape[0], -1, 4).sum(-1)  # [rows, d_in/4]: pruned per group of 4
        assert torch.all(groups == 2), name
        assert torch.all(params[name].detach()[mask.bool()] == 0)
