"""Build and train the demo Llama on CPU: pack documents into one token stream and train on random
fixed-length windows (deterministic by seed)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class ModelShape:
    """Llama shape; the default is the committed demo model (~4.2M parameters with a 2048 vocabulary)."""
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 688
    max_position_embeddings: int = 1024


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 250
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 5e-4
    warmup: int = 20
    weight_decay: float = 0.01
    seed: int = 0
    answer_weight: float = 5.0  # loss weight of the sentiment answer tokens (" positive"/" negative")


def build_model(shape: ModelShape, tokenizer):
    """A freshly initialised LlamaForCausalLM sized from `tokenizer`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=shape.hidden_size,
                         num_hidden_layers=shape.num_hidden_layers, num_attention_heads=shape.num_attention_heads,
                         num_key_value_heads=shape.num_attention_heads, intermediate_size=shape.intermediate_size,
                         max_position_embeddings=shape.max_position_embeddings, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config)


def pack(documents: list[str], tokenizer):
    """One long 1-D LongTensor: `<s> doc </s> <s> doc </s> ...`."""
    import torch

    ids: list[int] = []
    for enc in tokenizer(documents, add_special_tokens=False)["input_ids"]:
        ids.append(tokenizer.bos_token_id)
        ids.extend(enc)
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def train(model, stream, cfg: TrainConfig, progress: Callable[[int, float], None] | None = None,
          answer_ids: tuple[int, ...] = ()) -> list[float]:
    """AdamW with linear warmup and cosine decay on random windows of `stream`; returns the loss per step.

    Tokens in `answer_ids` get `cfg.answer_weight` in the loss: the answer is 1 token in ~35, and without
    the extra weight a 4-layer model stays near chance on sentiment for the first few hundred steps."""
    import math

    import torch

    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    losses = []
    for step in range(cfg.steps):
        starts = torch.randint(0, len(stream) - cfg.seq_len - 1, (cfg.batch_size,), generator=gen)
        batch = torch.stack([stream[s:s + cfg.seq_len] for s in starts.tolist()])  # (B, T)
        logits = model(input_ids=batch).logits[:, :-1]  # (B, T-1, V)
        target = batch[:, 1:]
        per_token = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                      reduction="none").view_as(target)
        weight = torch.ones_like(per_token)
        for a in answer_ids:
            weight = torch.where(target == a, torch.full_like(weight, cfg.answer_weight), weight)
        loss = (per_token * weight).sum() / weight.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress:
            progress(step, losses[-1])
    model.eval()
    return losses
