"""Layer-wise pruning of Hugging Face causal LMs (magnitude, Wanda, SparseGPT, RIA, GBLM).

`prune` is imported lazily so that the registry (method names and options) is available without torch.
"""
from pruners.config import ProgressEvent, PruneConfig, PruneResult
from pruners.errors import PruneError
from pruners.registry import get_method, list_methods

__all__ = ["PruneError", "PruneConfig", "PruneResult", "ProgressEvent", "prune", "list_methods", "get_method"]


def __getattr__(name):
    if name == "prune":
        from pruners.engine import prune
        return prune
    raise AttributeError(name)
