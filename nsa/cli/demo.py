"""`python -m nsa demo build|info`: rebuild the embedded SYNTHETIC demo model and data, or show what is built."""
from __future__ import annotations

import json
from pathlib import Path

from nsa.demo.build import BuildConfig, build, build_data_only
from nsa.errors import NSAError
from nsa.paths import DEMO_DATA_DIR, DEMO_MODEL_DIR


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("demo", help="the embedded synthetic demo model and data")
    sub = p.add_subparsers(dest="demo_command", metavar="<demo command>")
    b = sub.add_parser("build", help="generate the corpus, train tokenizer and model (CPU, a few minutes)",
                       description="Writes OUT/model (config, safetensors, tokenizer, build_info.json) and "
                                   "OUT/data (demo evaluation and calibration JSONL). Default OUT: nsa/demo.")
    b.add_argument("--steps", type=int, default=None, help="training steps (default: BuildConfig's)")
    b.add_argument("--lr", type=float, default=None, help="peak learning rate (default: BuildConfig's)")
    b.add_argument("--answer-weight", type=float, default=None,
                   help="loss weight of the answer tokens ' positive'/' negative' (default: BuildConfig's)")
    b.add_argument("--prompted-share", type=float, default=None,
                   help="share of training documents that are prompted reviews (default: BuildConfig's)")
    b.add_argument("--out", help="output folder (default: nsa/demo, i.e. the committed artifacts)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--threads", type=int, default=1, help="torch threads (1 when the machine is busy)")
    b.add_argument("--data-only", action="store_true",
                   help="rewrite only OUT/data (no training) for the model already in OUT/model, and record "
                        "the data hashes in its build_info.json")
    b.set_defaults(func=run_build)
    i = sub.add_parser("info", help="print the committed demo model's build_info.json")
    i.set_defaults(func=run_info)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_build(args) -> int:
    if args.steps is not None and args.steps < 1:
        raise NSAError(f"--steps must be a positive integer, got {args.steps}")
    if args.threads < 1:
        raise NSAError(f"--threads must be at least 1, got {args.threads}")
    for flag, value in (("--lr", args.lr), ("--answer-weight", args.answer_weight)):
        if value is not None and not value > 0:
            raise NSAError(f"{flag} must be positive, got {value}")
    if args.prompted_share is not None and not 0 < args.prompted_share <= 0.95:
        raise NSAError(f"--prompted-share must be in (0, 0.95], got {args.prompted_share}")
    from dataclasses import replace

    from tqdm import tqdm


    cfg = BuildConfig(seed=args.seed, threads=args.threads)
    if args.prompted_share is not None:
        cfg = replace(cfg, prompted_share=args.prompted_share)
    overrides = {k: v for k, v in (("steps", args.steps), ("lr", args.lr), ("answer_weight", args.answer_weight))
                 if v is not None}
    cfg = replace(cfg, train=replace(cfg.train, **overrides))
    out = Path(args.out) if args.out else None
    model_dir, data_dir = (out / "model", out / "data") if out else (DEMO_MODEL_DIR, DEMO_DATA_DIR)
    if args.data_only:
        if overrides or args.prompted_share is not None:
            raise NSAError("--data-only trains nothing: drop --steps/--lr/--answer-weight/--prompted-share")
        info = build_data_only(model_dir, data_dir, cfg)
        print(json.dumps(info["data_sha256"], indent=1))
        print(f"data: {data_dir}")
        return 0
    bar = tqdm(total=cfg.train.steps, desc="training demo model", unit="step")

    def progress(step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")

    info = build(model_dir, data_dir, cfg, progress)
    bar.close()
    print(json.dumps({k: info[k] for k in ("steps", "parameters", "final_loss", "dense_accuracy",
                                           "build_seconds")}, indent=1))
    print(f"model: {model_dir}\ndata: {data_dir}")
    return 0


def run_info(args) -> int:
    path = DEMO_MODEL_DIR / "build_info.json"
    if not path.exists():
        raise NSAError(f"the demo model is not built ({path} is missing): run `python -m nsa demo build`")
    print(path.read_text().strip())
    return 0
