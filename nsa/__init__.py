"""NSA Lab: prune a causal LM, evaluate it, and attribute meaning to the neurons pruning removed.

Importing `nsa` configures offline mode before transformers/datasets are imported (see `nsa.offline`).
"""
from nsa import offline as _offline

_offline.configure()
