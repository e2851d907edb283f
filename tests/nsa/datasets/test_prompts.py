"""Prompt settings of classification tasks: template presets, chat template, few-shot examples drawn by seed and
never from the evaluated rows; one rendered prompt for the evaluator, NSA and the dense cache key."""
from __future__ import annotations

import pytest

from nsa import datasets as D
from nsa.errors import NSAError
from nsa.evaluation import task_fingerprint
from nsa.jobs.spec import parse_spec
from nsa.matching import encode
from nsa.neurons import text_regions

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.mark.parametrize("kwargs, message", [
    ({"template": ""}, "template: expected a preset"),
    ({"template": "no fields here"}, "template: 'no fields here' is neither a preset"),
    ({"chat": "yes"}, "chat: expected true or false"),
    ({"num_fewshot": -1}, "num_fewshot: expected an integer in"),
    ({"num_fewshot": 1000}, "num_fewshot: expected an integer in"),
])
def test_bad_settings_name_their_field(kwargs, message):
    with pytest.raises(NSAError, match=message):
        D.PromptConfig(**kwargs)


def test_a_template_applies_where_the_rows_have_its_fields():
    rte = D.prompted("rte", D.PromptConfig(template="review", num_fewshot=1), limit=10)
    assert rte.prompt == D.get_task("rte").prompt and len(rte.shot_indices) == 1  # its own prompt, with a shot
    assert dict(rte.prompt_setting)["template"] == "review"  # the record says what was asked


def test_reference_is_the_task_itself_and_presets_render():
    sst2 = D.get_task("sst2")
    assert D.prompted(sst2, D.PromptConfig()) is sst2
    review = D.prompted(sst2, D.PromptConfig(template="review"))
    row = D.load_examples(sst2, limit=1)[0]
    assert D.prompt_for(review, row) == f"Review: {row['text']}\nSentiment:"
    assert D.choices_for(review, row) == [" negative", " positive"]
    assert task_fingerprint(review, 8) != task_fingerprint(sst2, 8)
    same_as_reference = D.prompted(sst2, D.PromptConfig(template=sst2.prompt))
    assert task_fingerprint(same_as_reference, 8) == task_fingerprint(sst2, 8)  # one prompt, one cache entry


def test_fewshot_rows_come_from_the_training_split_by_seed():
    spec = D.prompted("sst2", D.PromptConfig(template="review", num_fewshot=4, fewshot_seed=3), limit=50)
    again = D.prompted("sst2", D.PromptConfig(template="review", num_fewshot=4, fewshot_seed=3), limit=50)
    other = D.prompted("sst2", D.PromptConfig(template="review", num_fewshot=4, fewshot_seed=4), limit=50)
    assert spec.shots == again.shots and spec.shots != other.shots and len(spec.shot_indices) == 4
    train = {r["index"]: r for r in D.load_examples("sst2", split="train_sample")}
    for i in spec.shot_indices:
        shot = train[i]
        assert f"Review: {shot['text']}\nSentiment: {('negative', 'positive')[shot['label']]}\n\n" in spec.shots
    row = D.load_examples(spec, limit=1)[0]
    assert D.prompt_for(spec, row) == spec.shots + f"Review: {row['text']}\nSentiment:"


def test_without_a_training_split_shots_avoid_the_evaluated_rows():
    spec = D.prompted("imdb", D.PromptConfig(num_fewshot=2), limit=100)
    assert all(i >= 100 for i in spec.shot_indices)
    with pytest.raises(NSAError, match="num_fewshot: task 'imdb' has no training split"):
        D.prompted("imdb", D.PromptConfig(num_fewshot=2), limit=None)  # every row is evaluated


def test_chat_template_wraps_the_user_turn(stories):
    _, tok = stories
    with pytest.raises(NSAError, match="chat: this model's tokenizer has no chat template"):
        D.prompted("sst2", D.PromptConfig(chat=True), tok)
    tok = type(tok).from_pretrained(tok.name_or_path)
    tok.chat_template = CHATML
    spec = D.prompted("sst2", D.PromptConfig(template="review", chat=True, num_fewshot=1), tok, limit=10)
    row = D.load_examples(spec, limit=1)[0]
    prompt = D.prompt_for(spec, row)
    assert prompt.startswith("<|im_start|>user\n" + spec.shots) and prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert D.choices_for(spec, row) == ["negative", "positive"]  # the answer follows the tag, no space


def test_nsa_reads_the_examples_own_text_not_the_shots(stories):
    """With shots before it, the example's text is found after them: word positions are the example's."""
    _, tok = stories
    spec = D.prompted("sst2", D.PromptConfig(template="review", num_fewshot=2), limit=5)
    row = D.load_examples(spec, limit=5)[0]
    prompt = D.prompt_for(spec, row)
    (start, end), = text_regions(spec, row, prompt)
    assert start >= len(spec.shots) and prompt[start:end] == row["text"]
    enc = encode(spec, [row], tok, ["the"], 512)[0]
    assert all(enc.offsets[t][0] >= len(spec.shots) for t in enc.text_positions)


def test_job_spec_prompt_section(stories_dir):
    base = {"model": str(stories_dir), "prune": {"method": "magnitude"}, "evaluate": {"tasks": ["sst2", "rte"],
                                                                                      "limit": 8}}
    plain = parse_spec(base)
    assert "prompt" not in plain.to_dict()  # the reference setting leaves run ids as they were
    asked = parse_spec(base | {"prompt": {"num_fewshot": 2}})
    assert asked.id != plain.id and asked.to_dict()["prompt"]["num_fewshot"] == 2
    review = parse_spec(base | {"prompt": {"template": "review"}})  # sentiment tasks take it, RTE keeps its own
    assert review.id != plain.id
    with pytest.raises(NSAError, match="prompt.template: the template names text, which the rows of rte lack"):
        parse_spec(base | {"evaluate": {"tasks": ["rte"]}, "prompt": {"template": "review"}})
    with pytest.raises(NSAError, match="prompt.shots: unknown key"):
        parse_spec(base | {"prompt": {"shots": 2}})
