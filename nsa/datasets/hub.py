"""Hub rows -> the local JSONL schema, and the small fixes local copies need to match the hub."""
from __future__ import annotations

import re
from typing import Callable


def _hf_text_label(text: str, label: str = "label") -> Callable[[dict], dict]:
    return lambda row: {"text": row[text], "label": int(row[label])}


def _hf_amazon(row: dict) -> dict:
    return {"text": f"{row['title']}: {row['content']}", "label": int(row["label"])}


def _hf_sentiment140(row: dict) -> dict | None:
    polarity = int(row["sentiment"])
    return None if polarity == 2 else {"text": row["text"], "label": 0 if polarity == 0 else 1}


def _hf_arc(row: dict) -> dict:
    labels = list(row["choices"]["label"])
    return {"question": row["question"], "choices": list(row["choices"]["text"]),
            "answer": labels.index(row["answerKey"])}


def _hf_obqa(row: dict) -> dict:
    labels = list(row["choices"]["label"])
    return {"question": row["question_stem"], "choices": list(row["choices"]["text"]),
            "answer": labels.index(row["answerKey"].lstrip())}


def _hf_hellaswag(row: dict) -> dict:
    return {"question": _hellaswag_preprocess(row["activity_label"] + ": " + row["ctx_a"] + " "
                                              + row["ctx_b"].capitalize()),
            "choices": [_hellaswag_preprocess(e) for e in row["endings"]], "answer": int(row["label"])}


def _hellaswag_preprocess(text: str) -> str:
    """lm-eval's hellaswag `utils.preprocess` (the local copy is already cleaned this way)."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hf_winogrande(row: dict) -> dict:
    sentence = row["sentence"]
    cut = sentence.index("_")
    options = [row["option1"], row["option2"]]
    return {"sentence": sentence, "option1": options[0], "option2": options[1], "choices": options,
            "answer": int(row["answer"]) - 1, "contexts": [sentence[:cut] + o for o in options],
            "continuation": sentence[cut + 1:].strip()}


HF_NORMALIZERS: dict[str, Callable[[dict], dict | None]] = {
    "sst2": _hf_text_label("sentence"),
    "text_label": _hf_text_label("text"),
    "amazon": _hf_amazon,
    "sentiment140": _hf_sentiment140,
    "rte": lambda r: {"premise": r["sentence1"], "hypothesis": r["sentence2"], "label": int(r["label"])},
    "boolq": lambda r: {"passage": r["passage"], "question": r["question"], "label": int(r["label"])},
    "arc": _hf_arc,
    "obqa": _hf_obqa,
    "piqa": lambda r: {"question": r["goal"], "choices": [r["sol1"], r["sol2"]], "answer": int(r["label"])},
    "hellaswag": _hf_hellaswag,
    "winogrande": _hf_winogrande,
    "text": lambda r: {"text": r["text"]} if r["text"].strip() else None,
}

# Local rows that need a touch to match the harness's hub rows exactly.
LOCAL_FIXUPS: dict[str, Callable[[dict], dict]] = {
    # The MosaicML gauntlet copy appended "?" to every BoolQ question; the hub rows have none and the
    # harness prompt adds it ("Question: {{question}}?"), so strip it to avoid "??".
    "boolq": lambda r: {**r, "question": r["question"][:-1] if r["question"].endswith("?") else r["question"]},
}

