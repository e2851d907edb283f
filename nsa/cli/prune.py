"""`python -m nsa prune`: prune a model with calibration from a source or a token file; write masks/stats.

The method, sparsity, pattern, sparsity profile and options become one `pruners.PruneConfig`, validated where it
is defined; an error names the flag (`--sparsity: must be in [0, 1) ...`) before the model loads. With
`--save-model`, a structured method's result is written as a smaller stock model (`pruners.shrink`).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from tqdm import tqdm

from nsa.atomic import atomic_dir
from nsa.calibration import build_calibration
from nsa.calibration import check_size as check_calibration_size
from nsa.cli.checks import check_out
from nsa.errors import NSAError
from nsa.models import check_device, load_model, resolve_model_dir
from pruners import PruneConfig, PruneError, get_method, list_methods, list_profiles, prune
from pruners.io import save_result
from pruners.profiles import get_profile
from pruners.shrink import check_shrinkable, shrink


def flag(field: str | None) -> str | None:
    """The command-line flag of a config field ("sparsity" -> --sparsity, "options.block_size" -> --block-size)."""
    if field is None:
        return None
    return "--" + field.split(".")[-1].replace("_", "-")


def _method_options():
    """{option name: (Option, [methods declaring it])} over all registered methods."""
    opts = {}
    for m in list_methods():
        for o in get_method(m).options:
            opts.setdefault(o.name, (o, []))[1].append(m)
    return opts


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("prune", help=f"prune a causal LM ({', '.join(list_methods())})",
                              description="Writes OUT/masks.safetensors and OUT/stats.json "
                                          "(+ weights.safetensors, model/).")
    p.add_argument("--model", required=True, help='model folder, .gguf file, hub id, or "demo"')
    p.add_argument("--method", required=True, help=f"one of {', '.join(list_methods())}")
    p.add_argument("--sparsity", default=0.5, help="fraction pruned, in [0, 1) (default 0.5)")
    p.add_argument("--pattern", default="unstructured", help='"unstructured" or "N:M" (e.g. 2:4)')
    p.add_argument("--sparsity-profile", default="uniform",
                   help=f"how the sparsity is spread over the decoder layers: {', '.join(list_profiles())} "
                        "(default uniform; owl: unstructured methods only)")
    p.add_argument("--calibration", help="calibration source (see `python -m nsa tasks`), e.g. c4")
    p.add_argument("--calib-tokens", help="safetensors file with key input_ids, int64 [nsamples, seqlen]")
    p.add_argument("--nsamples", type=int, default=None,
                   help="calibration rows (default 128; with --calib-tokens: all rows)")
    p.add_argument("--seqlen", type=int, default=None,
                   help="tokens per row (default 2048; with --calib-tokens: the rows' length)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration draw")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available, else cpu)")
    p.add_argument("--calib-device", default=None, help="where calibration activations live (default: --device)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--save-weights", action="store_true", help="also write weights.safetensors")
    p.add_argument("--save-model", action="store_true",
                   help="also write OUT/model/ (save_pretrained + tokenizer); structured methods (flap, shortgpt) "
                        "write the smaller model with the removed heads, channels or layers gone")
    p.add_argument("--trust-remote-code", action="store_true")
    g = p.add_argument_group("method options (declared by each method; defaults are the method's own)")
    for name, (opt, methods) in _method_options().items():
        g.add_argument(flag(name), dest=f"opt_{name}", default=None, metavar=opt.type.__name__.upper(),
                       help=f"{opt.help.replace('%', '%%')} [{', '.join(methods)}]")
    g = p.add_argument_group("sparsity profile options (declared by each profile)")
    for name in list_profiles():
        for opt in get_profile(name).options:
            g.add_argument(flag(opt.name), dest=f"popt_{opt.name}", default=None, metavar=opt.type.__name__.upper(),
                           help=f"{opt.help.replace('%', '%%')} [{name}]")
    p.set_defaults(func=run_prune)


def config_from_args(args) -> PruneConfig:
    """The PruneConfig of the flags; a bad value is an NSAError naming its flag."""
    given = {k[4:]: v for k, v in vars(args).items() if k.startswith("opt_") and v is not None}
    profile = {k[5:]: v for k, v in vars(args).items() if k.startswith("popt_") and v is not None}
    try:
        return PruneConfig(method=args.method, sparsity=args.sparsity, pattern=args.pattern, options=given,
                           sparsity_profile=args.sparsity_profile, profile_options=profile)
    except PruneError as err:
        raise NSAError(err.at(flag(err.field))) from None


def _validate(args) -> PruneConfig:
    """Everything checkable before the model loads."""
    config = config_from_args(args)
    for name in ("nsamples", "seqlen"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise NSAError(f"--{name} {value}: must be a positive integer")
    if not 0 <= args.seed < 2**32:
        raise NSAError(f"--seed {args.seed}: must be in [0, 2^32)")
    if args.calibration:
        try:
            check_calibration_size(args.nsamples or 128, args.seqlen or 2048)
        except NSAError as err:
            raise NSAError(err.at("--nsamples x --seqlen")) from None
    if args.calib_tokens and args.calibration:
        raise NSAError("give either --calibration or --calib-tokens, not both")
    if args.calib_tokens and not Path(args.calib_tokens).is_file():
        raise NSAError(f"--calib-tokens {args.calib_tokens} does not exist")
    if config.needs_calibration and not (args.calib_tokens or args.calibration):
        why = "" if get_method(config.method).needs_calibration else f" with sparsity profile {config.sparsity_profile}"
        raise NSAError(f"method {config.method}{why} needs calibration: give --calibration SOURCE or --calib-tokens "
                       "FILE")
    check_out(args.out)
    for name in ("device", "calib_device"):
        if getattr(args, name):
            try:
                check_device(getattr(args, name))
            except NSAError as err:
                raise NSAError(err.at(flag(name))) from None
    resolve_model_dir(args.model)
    return config


def _load_calib_tokens(path: str, nsamples: int | None, seqlen: int | None):
    try:
        data = load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise NSAError(f"--calib-tokens {path} is not a readable safetensors file: {str(err)[:200]}") from None
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
    config = _validate(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_model(args.model, device=device, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    structured = get_method(config.method).structured
    if args.save_model and structured:
        try:
            check_shrinkable(model, config.options)
        except PruneError as err:
            raise NSAError(err.at(flag(err.field))) from None
    calib = None
    if args.calib_tokens:
        calib = _load_calib_tokens(args.calib_tokens, args.nsamples, args.seqlen)
    elif args.calibration:
        if tokenizer is None:
            raise NSAError(f"{args.model} has no tokenizer, so --calibration cannot tokenize text: "
                           "give --calib-tokens FILE with token ids instead")
        calib = build_calibration(args.calibration, tokenizer, args.nsamples or 128, args.seqlen or 2048,
                                  seed=args.seed).input_ids
    if config.nm is not None and float(args.sparsity) != config.sparsity:
        print(f"note: pattern {config.pattern} prunes {config.nm[0]} of every {config.nm[1]} weights, so the "
              f"sparsity is {config.sparsity:g} (--sparsity {args.sparsity} does not apply)", file=sys.stderr)
    bar = tqdm(total=100, desc=f"prune {config.method}", unit="%", file=sys.stderr)

    def progress(event):
        bar.n = round(100 * event.fraction)
        bar.set_postfix_str(event.message)
        bar.refresh()

    try:
        result = prune(model, calib, config, progress=progress, device=device, calib_device=args.calib_device)
    except PruneError as err:
        raise NSAError(err.at(flag(err.field))) from None
    finally:
        bar.close()
    result.stats["model"] = args.model
    result.stats["calibration"] = {"source": args.calibration, "calib_tokens": args.calib_tokens, "seed": args.seed,
                                   "shape": list(calib.shape) if calib is not None else None}
    out = Path(args.out)
    save_weights = args.save_weights
    if result.stats.get("channel_permutation") and not save_weights:
        # the permuted model's masks only fit its permuted weights: masks alone + the dense model are wrong
        print("note: channel permutation moved weights, so weights.safetensors is written too "
              "(apply it with the masks)", file=sys.stderr)
        save_weights = True
    if result.weights and any(k not in result.masks for k in result.weights) and not save_weights:
        # tensors the method added (FLAP's compensation biases): without them the masks give another model
        print(f"note: {config.method} added tensors ({next(k for k in result.weights if k not in result.masks)}, "
              "...), so weights.safetensors is written too (apply it with the masks)", file=sys.stderr)
        save_weights = True
    saved = model
    if args.save_model and structured:
        try:
            saved, result.stats["saved_model"] = shrink(model, result.masks)
        except PruneError as err:
            raise NSAError(err.at(flag(err.field))) from None
    paths = save_result(result, out, save_weights=save_weights, model=model)
    if args.save_model:
        with atomic_dir(out / "model") as tmp:
            saved.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
    kind = "structured" if structured else config.pattern
    print(f"pruned {config.method} {kind} sparsity {result.stats['overall_sparsity']:.4f} "
          f"in {result.stats['total_time_s']:.2f}s → {', '.join(str(p) for p in paths.values())}")
    if "saved_model" in result.stats:
        info = result.stats["saved_model"]
        print(f"saved model: {info['params_before']:,} → {info['params_after']:,} parameters"
              + "".join(f"; {note}" for note in info["kept_full_shape"]))
    return 0
