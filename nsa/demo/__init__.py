"""The embedded SYNTHETIC demo: a templated corpus, a byte-level BPE tokenizer and a tiny Llama trained on CPU
(`python -m nsa demo build`); the committed artifacts live in `nsa/demo/model/` and `nsa/demo/data/`."""
