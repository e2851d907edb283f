"""Pruning of Hugging Face causal LMs: layer-wise unstructured methods (magnitude, Wanda, SparseGPT, RIA, GBLM)
under a sparsity profile (uniform, OWL), and structured methods (FLAP, ShortGPT) whose results shrink into a
smaller stock model (`pruners.shrink`). Self-contained: torch and transformers only; nothing here imports `nsa`."""
from pruners.config import ProgressEvent, PruneConfig
from pruners.engine import prune
from pruners.errors import PruneError
from pruners.method import PruneResult
from pruners.profiles import list_profiles
from pruners.registry import get_method, list_methods

__all__ = ["PruneError", "PruneConfig", "PruneResult", "ProgressEvent", "prune", "list_methods", "get_method",
           "list_profiles"]
