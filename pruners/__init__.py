"""Layer-wise pruning of Hugging Face causal LMs (magnitude, Wanda, SparseGPT, RIA, GBLM)."""
from pruners.errors import PruneError

__all__ = ["PruneError"]
