"""`python -m nsa prune`: prune a model with calibration from a source or a token file; write masks/stats.

Cheap checks (sparsity, pattern, method, options, paths, nsamples) run before torch/transformers are imported.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nsa.errors import NSAError


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _method_options():
    """{option name: Option} over all registered methods (first declaration wins for the flag's help)."""
    from pruners.registry import get_method, list_methods
    opts = {}
    for m in list_methods():
        for o in get_method(m).options:
            opts.setdefault(o.name, (o, []))[1].append(m)
    return opts


def add_commands(subparsers) -> None:
    from pruners.registry import list_methods
    p = subparsers.add_parser("prune", help="prune a causal LM (magnitude, wanda, sparsegpt, ria, gblm)",
                              description="Writes OUT/masks.safetensors and OUT/stats.json "
                                          "(+ weights.safetensors, model/).")
    p.add_argument("--model", required=True, help='model folder, hub id, or "demo"')
    p.add_argument("--method", required=True, help=f"one of {', '.join(list_methods())}")
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction pruned, in [0, 1) (default 0.5)")
    p.add_argument("--pattern", default="unstructured", help='"unstructured" or "N:M" (e.g. 2:4)')
    p.add_argument("--calibration", help="calibration source (see `python -m nsa tasks`), e.g. c4")
    p.add_argument("--calib-tokens", help="safetensors file with key input_ids, int64 [nsamples, seqlen]")
    p.add_argument("--nsamples", type=int, default=None, help="calibration rows (default 128; with --calib-tokens: all rows)")
    p.add_argument("--seqlen", type=int, default=None, help="tokens per row (default 2048; with --calib-tokens: the rows' length)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available, else cpu)")
    p.add_argument("--calib-device", default=None, help="where calibration activations live (default: --device)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--save-weights", action="store_true", help="also write weights.safetensors")
    p.add_argument("--save-model", action="store_true", help="also write OUT/model/ (save_pretrained + tokenizer)")
    p.add_argument("--trust-remote-code", action="store_true")
    g = p.add_argument_group("method options (declared by each method; defaults are the method's own)")
    for name, (opt, methods) in _method_options().items():
        kind = (lambda v: v.lower() in ("1", "true", "yes", "on")) if opt.type is bool else opt.type
        g.add_argument(_flag(name), dest=f"opt_{name}", type=kind, default=None, metavar=opt.type.__name__.upper(),
                       help=f"{opt.help} [{', '.join(methods)}]")
    p.set_defaults(func=run_prune)


def _validate(args) -> tuple:
    """Everything checkable without torch: returns (method, options)."""
    from pruners.config import parse_pattern, validate_sparsity
    from pruners.errors import PruneError
    from pruners.registry import get_method
    try:
        method = get_method(args.method)
        validate_sparsity(args.sparsity)
        parse_pattern(args.pattern)
        given = {k[4:]: v for k, v in vars(args).items() if k.startswith("opt_") and v is not None}
        declared = {o.name for o in method.options}
        foreign = [k for k in given if k not in declared]
        if foreign:
            raise PruneError(f"method {method.name} has no option(s) {', '.join(_flag(k) for k in foreign)}; "
                             f"its options: {', '.join(_flag(k) for k in sorted(declared)) or 'none'}")
        options = method.resolve_options(given)
    except PruneError as err:
        raise NSAError(str(err)) from err
    if args.nsamples is not None and args.nsamples <= 0:
        raise NSAError(f"--nsamples {args.nsamples}: need at least 1 calibration sample")
    if args.seqlen is not None and args.seqlen <= 0:
        raise NSAError(f"--seqlen {args.seqlen}: need at least 1 token per sample")
    if args.calib_tokens and args.calibration:
        raise NSAError("give either --calibration or --calib-tokens, not both")
    if args.calib_tokens and not Path(args.calib_tokens).is_file():
        raise NSAError(f"--calib-tokens {args.calib_tokens} does not exist")
    if method.needs and not (args.calib_tokens or args.calibration):
        raise NSAError(f"method {method.name} needs calibration: give --calibration SOURCE or --calib-tokens FILE")
    from nsa.models import resolve_model_dir
    resolve_model_dir(args.model)
    return method, options


def _load_calib_tokens(path: str, nsamples: int | None, seqlen: int | None):
    import torch
    from safetensors.torch import load_file
    try:
        data = load_file(path)
    except Exception as err:
        raise NSAError(f"--calib-tokens {path} is not a readable safetensors file: {err}") from err
    if "input_ids" not in data:
        raise NSAError(f"--calib-tokens {path} has no 'input_ids' tensor (keys: {sorted(data)})")
    ids = data["input_ids"]
    if ids.dtype != torch.int64:
        raise NSAError(f"--calib-tokens: input_ids has dtype {ids.dtype}; token ids must be int64")
    if ids.dim() != 2 or ids.numel() == 0:
        raise NSAError(f"--calib-tokens: input_ids has shape {tuple(ids.shape)}; need a non-empty [nsamples, seqlen]")
    if seqlen is not None:
        if ids.shape[1] < seqlen:
            raise NSAError(f"--calib-tokens rows have {ids.shape[1]} tokens, shorter than --seqlen {seqlen}")
        ids = ids[:, :seqlen]
    if nsamples is not None:
        if ids.shape[0] < nsamples:
            raise NSAError(f"--calib-tokens has {ids.shape[0]} rows, fewer than --nsamples {nsamples}")
        ids = ids[:nsamples]
    return ids


def run_prune(args) -> int:
    method, options = _validate(args)
    import torch
    from tqdm import tqdm

    from nsa.models import load_model
    from pruners import PruneConfig, prune
    from pruners.errors import PruneError
    from pruners.io import save_result

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_model(args.model, device=device, dtype=args.dtype,
                                  trust_remote_code=args.trust_remote_code)
    calib = None
    if args.calib_tokens:
        calib = _load_calib_tokens(args.calib_tokens, args.nsamples, args.seqlen)
    elif args.calibration:
        from nsa.calibration import build_calibration
        if tokenizer is None:
            raise NSAError(f"{args.model} has no tokenizer, so --calibration cannot tokenize text: "
                           "give --calib-tokens FILE with token ids instead")
        calib = build_calibration(args.calibration, tokenizer, args.nsamples or 128, args.seqlen or 2048,
                                  seed=args.seed).input_ids
    config = PruneConfig(method=method.name, sparsity=args.sparsity, pattern=args.pattern, options=options,
                         seed=args.seed, device=device, calib_device=args.calib_device)
    bar = tqdm(total=100, desc=f"prune {method.name}", unit="%", file=sys.stderr)

    def progress(event):
        bar.n = round(100 * event.fraction)
        bar.set_postfix_str(event.message)
        bar.refresh()

    try:
        result = prune(model, calib, config, progress=progress)
    except PruneError as err:
        raise NSAError(str(err)) from err
    finally:
        bar.close()
    result.stats["model"] = args.model
    result.stats["calibration"] = {"source": args.calibration, "calib_tokens": args.calib_tokens,
                                   "shape": list(calib.shape) if calib is not None else None}
    out = Path(args.out)
    save_weights = args.save_weights
    if result.stats.get("channel_permutation") and not save_weights:
        # the permuted model's masks only fit its permuted weights: masks alone + the dense model are wrong
        print("note: channel permutation moved weights, so weights.safetensors is written too "
              "(apply it with the masks)", file=sys.stderr)
        save_weights = True
    paths = save_result(result, out, save_weights=save_weights, model=model)
    if args.save_model:
        from nsa.atomic import atomic_dir
        with atomic_dir(out / "model") as tmp:
            model.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
    print(f"pruned {method.name} {args.pattern} sparsity {result.stats['overall_sparsity']:.4f} "
          f"in {result.stats['total_time_s']:.2f}s → {', '.join(str(p) for p in paths.values())}")
    return 0
