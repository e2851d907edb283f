"""Every built-in pruning method, one module each; `pruners.registry` registers `METHODS` (nothing registers
itself on import)."""
from pruners.methods import gblm, magnitude, ria, sparsegpt, wanda

METHODS = (magnitude.METHOD, wanda.METHOD, sparsegpt.METHOD, ria.METHOD, gblm.METHOD)
