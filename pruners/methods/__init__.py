"""Every built-in pruning method, one module each; `pruners.registry` registers `METHODS` (nothing registers
itself on import). Unstructured methods score weights layer by layer; structured ones (flap, shortgpt) remove
whole units through their own whole-model driver."""
from pruners.methods import flap, gblm, magnitude, ria, shortgpt, sparsegpt, wanda

METHODS = (magnitude.METHOD, wanda.METHOD, sparsegpt.METHOD, ria.METHOD, gblm.METHOD, flap.METHOD,
           shortgpt.METHOD)
