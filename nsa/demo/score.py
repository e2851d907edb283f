"""A direct log-likelihood sentiment scorer for the demo (fast, for tests, `demo build` and bench/bench_demo.py):
it compares log p(" negative") and log p(" positive") after the evaluator's prompt, like `nsa.evaluation`."""
from __future__ import annotations

from nsa.datasets.spec import SENTIMENT_PROMPT

ANSWERS = (" negative", " positive")


def sentiment_accuracy(model, tokenizer, rows: list[dict], batch_size: int = 64) -> float:
    """Fraction of rows {"text", "label"} whose higher-likelihood answer is the label."""
    import torch

    answer_ids = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in ANSWERS]
    if any(len(a) != 1 for a in answer_ids):  # the demo tokenizer has single-token answers
        raise ValueError(f"answers must be single tokens, got {answer_ids}")
    neg, pos = answer_ids[0][0], answer_ids[1][0]
    correct = 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size]
            enc = [[tokenizer.bos_token_id] + tokenizer(SENTIMENT_PROMPT.format(text=r["text"]),
                                                        add_special_tokens=False)["input_ids"] for r in chunk]
            width = max(map(len, enc))
            ids = torch.full((len(enc), width), tokenizer.pad_token_id)
            mask = torch.zeros((len(enc), width), dtype=torch.long)
            for j, e in enumerate(enc):  # right padding; read logits at each row's last real token
                ids[j, :len(e)] = torch.tensor(e)
                mask[j, :len(e)] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
            last = logits[torch.arange(len(enc)), torch.tensor([len(e) - 1 for e in enc])]
            pred = (last[:, pos] > last[:, neg]).long()
            correct += int((pred == torch.tensor([r["label"] for r in chunk])).sum())
    return correct / max(1, len(rows))
