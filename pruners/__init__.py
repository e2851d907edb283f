"""Layer-wise pruning of Hugging Face causal LMs (magnitude, Wanda, SparseGPT, RIA, GBLM). Self-contained:
torch and transformers only; nothing here imports `nsa`."""
from pruners.config import ProgressEvent, PruneConfig, PruneResult
from pruners.engine import prune
from pruners.errors import PruneError
from pruners.registry import get_method, list_methods

__all__ = ["PruneError", "PruneConfig", "PruneResult", "ProgressEvent", "prune", "list_methods", "get_method"]
