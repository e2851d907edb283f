"""NSA Lab: prune a causal LM, evaluate it, and attribute meaning to the neurons pruning removed.

Importing `nsa` does nothing else: no network (the hub's offline switch happens where a hub id is first
resolved, `nsa.hub`), no heavy imports.
"""
