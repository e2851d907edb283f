"""`python -m nsa restore RUN --cluster NAME | --neurons L:I,...`: put pruned neurons' dense weights back into the
run's pruned model and print the accuracy and gold margin they recover beside layer-matched random pruned neurons
(`nsa.restore`; the result is cached, a second call prints it at once)."""
from __future__ import annotations

import argparse

from nsa.cli.bar import Bar
from nsa.errors import NSAError
from nsa.restore import MIN_DRAWS, RestoreConfig, plan_restore, restore_run


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("restore", help="restore pruned neurons' dense weights vs random ones (causal check)",
                              description=__doc__.splitlines()[0])
    p.add_argument("run", help="a run id (`python -m nsa runs`)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--cluster", help="an NSA cluster of the run (its top labelled neurons, as in the validation)")
    which.add_argument("--neurons", help="hand-picked neurons LAYER:INDEX,LAYER:INDEX,...")
    p.add_argument("--draws", type=int, default=MIN_DRAWS, help=f"random control sets (at least {MIN_DRAWS})")
    p.add_argument("--seed", type=int, default=0, help="seed of the random control sets")
    p.add_argument("--device", help="where to run (default: the run's device)")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> RestoreConfig:
    try:
        return RestoreConfig(neurons=args.neurons, cluster=args.cluster, draws=args.draws, seed=args.seed)
    except NSAError as err:
        raise NSAError(err.at(f"--{err.field}" if err.field else None)) from None


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    try:
        plan_restore(args.run, config)  # every check in seconds, before the bar and the model
        with Bar("restore") as bar:
            result = restore_run(args.run, config, progress=bar, device=args.device)
    except NSAError as err:
        raise NSAError(err.at(f"--{err.field}" if err.field else None)) from None
    print_result(result)
    return 0


def print_result(result: dict) -> None:
    sel = result["selection"]
    what = f"neurons of cluster {sel['cluster']!r}" if sel["cluster"] else "hand-picked neurons"
    skipped = f" ({len(sel['never_pruned'])} of its top neurons were never pruned, left out)" \
        if sel["never_pruned"] else ""
    print(f"restore on run {result['run_id']}: {sel['n_neurons']} {what}{skipped}; task "
          f"{result['task']}, n = {result['n_examples']} examples, {result['draws']} random draws (seed "
          f"{result['seed']}){' [cached]' if result.get('cache', {}).get('reused') else ''}")
    for s in result["scopes"].values():
        frac = "" if s["recovered_fraction"] is None else f" = {100 * s['recovered_fraction']:.0f}% of the lost"
        lost = f"lost {s['lost_points']:.2f} points" if s["lost_points"] > 0 else \
            f"nothing lost (pruning changed it by {-s['lost_points']:+.2f})"
        print(f"  {s['examples']}:")
        print(f"    accuracy  dense {s['dense_accuracy']:.1f}%  pruned {s['pruned_accuracy']:.1f}%  restored "
              f"{s['restored_accuracy']:.1f}%  {lost}, recovered "
              f"{s['recovered_points']:+.2f}{frac}; random {s['random_recovered_mean']:+.2f} ± "
              f"{s['random_recovered_std']:.2f} (p = {s['p_accuracy']:.3g})")
        mfrac = "" if s["margin_recovered_fraction"] is None else \
            f" = {100 * s['margin_recovered_fraction']:.0f}% of the lost"
        mlost = f"lost {s['margin_lost']:.3f}" if s["margin_lost"] > 0 else \
            f"nothing lost ({-s['margin_lost']:+.3f})"
        print(f"    margin    dense {s['dense_margin']:.3f}  pruned {s['pruned_margin']:.3f}  restored "
              f"{s['restored_margin']:.3f} nats  {mlost}, recovered "
              f"{s['margin_recovered']:+.3f}{mfrac}; random {s['random_margin_recovered_mean']:+.3f} ± "
              f"{s['random_margin_recovered_std']:.3f} (p = {s['p_margin']:.3g})")
    print(result["verdict"])
