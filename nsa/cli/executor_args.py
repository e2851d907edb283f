"""The executor flags shared by `worker` and `study` (`nsa.jobs.executors`)."""
from __future__ import annotations

import argparse

from nsa.jobs.executors import EXECUTORS, Executor, get_executor


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("where jobs run (docs/jobs.md, section Clusters)")
    g.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: this machine's worker (default); ray: the nodes of a Ray cluster")
    g.add_argument("--address", metavar="ADDR",
                   help="with --executor ray: HOST:6379, ray://HOST:10001 or auto (default: RAY_ADDRESS, else a "
                        "cluster started on this machine, else a local Ray instance for the run)")
    g.add_argument("--shared-cache", action="store_true", default=None,
                   help="with --executor ray: every node sees NSA_CACHE_DIR at the same path; tasks write runs "
                        "into it (default: runs come back through Ray)")
    g.add_argument("--cpus-per-job", type=int, metavar="N",
                   help="with --executor ray: CPUs (torch threads) per CPU job (default: from the model's size)")
    g.add_argument("--node-cache", metavar="DIR",
                   help="with --executor ray: the staging cache on each node (default: <tmp>/nsa-ray-<uid>)")


def executor_from_args(args: argparse.Namespace) -> Executor:
    """The executor the flags choose (options of another executor are refused, naming them)."""
    return get_executor(args.executor, address=args.address, shared_cache=args.shared_cache,
                        cpus_per_job=args.cpus_per_job, node_cache=args.node_cache)
