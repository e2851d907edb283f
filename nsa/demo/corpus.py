"""Deterministic, templated SYNTHETIC corpus for the demo model: reviews (with the evaluator's sentiment prompt)
plus generic encyclopedic sentences, facts and question/answer lines, so the demo is a small general LM.

Every function takes a `random.Random`, so the same seed gives the same text on every machine.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from nsa.datasets.spec import SENTIMENT_PROMPT
from nsa.demo import lexicon as L

LABEL_NAMES = ("negative", "positive")
NEGATION_SHARE = 0.15  # probability that a sentiment phrase is a negated opposite ("not good" = negative)


@dataclass(frozen=True)
class Vocabulary:
    """The words a review may use: the seen lexicon for training/held-out reviews, the unseen one for demo-unseen."""
    nouns: tuple[str, ...]
    aspects: tuple[str, ...]
    descriptors: tuple[str, ...]


def _seen_vocab() -> Vocabulary:
    nouns = tuple(n for ns, _ in L.DOMAINS.values() for n in ns)
    aspects = tuple(a for _, asp in L.DOMAINS.values() for a in asp)
    return Vocabulary(nouns, aspects, tuple(L.DESCRIPTORS))


SEEN = _seen_vocab()
UNSEEN = Vocabulary(tuple(L.UNSEEN_NOUNS), tuple(L.UNSEEN_ASPECTS), tuple(L.UNSEEN_DESCRIPTORS))


def _adj(rng: random.Random, positive: bool, negation: float = NEGATION_SHARE) -> str:
    """A sentiment phrase of the given polarity: plain, intensified, or (with probability `negation`) a negated
    opposite ("not good" = negative)."""
    kind = rng.random()
    if kind < negation:  # negation flips the word's polarity
        word = rng.choice(L.NEGATIVE if positive else L.POSITIVE)
        return f"{rng.choice(L.NEGATIONS)} {word}"
    word = rng.choice(L.POSITIVE if positive else L.NEGATIVE)
    if kind < negation + 0.4:  # intensified ("very good"); the rest are plain words
        return f"{rng.choice(L.INTENSIFIERS)} {word}"
    return word


def _subject(rng: random.Random, vocab: Vocabulary) -> str:
    noun = rng.choice(vocab.nouns)
    if rng.random() < 0.5:
        return f"the {rng.choice(vocab.descriptors)} {noun}"
    return f"the {noun}"


def _clause(rng: random.Random, vocab: Vocabulary, positive: bool, negation: float = NEGATION_SHARE) -> str:
    subject = _subject(rng, vocab)
    aspect = rng.choice(vocab.aspects)
    templates = [
        lambda: f"{subject} was {_adj(rng, positive, negation)}",
        lambda: f"the {aspect} was {_adj(rng, positive, negation)}",
        lambda: f"{subject} had a {_adj(rng, positive, negation).replace('not at all ', 'not ')} {aspect}",
        lambda: f"{rng.choice(L.REVIEWERS)} {rng.choice(L.POSITIVE_VERBS if positive else L.NEGATIVE_VERBS)} {subject}",
        lambda: f"{subject} is {_adj(rng, positive, negation)} and the {aspect} is {_adj(rng, positive, negation)}",
    ]
    return rng.choice(templates)()


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def review(rng: random.Random, positive: bool, vocab: Vocabulary = SEEN, negation: float = NEGATION_SHARE) -> str:
    """One review with the given overall polarity; some are mixed ("X was bad, but overall Y was great").
    `negation` is the probability that a sentiment phrase is a negated opposite ("not good")."""
    r = rng.random()
    if r < 0.15:  # mixed: a concession of the opposite polarity, then the verdict
        concession = _clause(rng, vocab, not positive, negation)
        verdict = _clause(rng, vocab, positive, negation)
        word = "great" if positive else "bad"
        return f"{_cap(concession)}, but overall it was {word}: {verdict}."
    text = _cap(_clause(rng, vocab, positive, negation)) + "."
    if r < 0.6:
        text += " " + _cap(_clause(rng, vocab, positive, negation)) + "."
    return text


def sentiment_prompt(text: str, label: int) -> str:
    """The evaluator's prompt with its answer, exactly as `demo-reviews` / sst2 score it."""
    return SENTIMENT_PROMPT.format(text=text) + " " + LABEL_NAMES[label]


def labelled_reviews(rng: random.Random, n: int, vocab: Vocabulary = SEEN,
                     negation: float = NEGATION_SHARE) -> list[dict]:
    """`n` rows {"text", "label"}, balanced, shuffled, without duplicate texts."""
    rows, seen = [], set()
    while len(rows) < n:
        label = len(rows) % 2
        text = review(rng, bool(label), vocab, negation)
        if text not in seen:
            seen.add(text)
            rows.append({"text": text, "label": label})
    rng.shuffle(rows)
    return rows


# ---- generic text -------------------------------------------------------------------------------------------
def _encyclopedia(rng: random.Random) -> str:
    place = rng.choice(L.PLACES)
    topic = rng.choice(list(L.TOPICS))
    adj = rng.choice(L.TOPICS[topic])
    year = rng.randint(1200, 1990)
    return rng.choice([
        f"The {topic} of {place} is {adj}. It was first described in {year}.",
        f"{place} is a region known for its {adj} {topic}. The capital of {place} is {L.CAPITALS[place]}.",
        f"In {year}, travellers reached the {adj} {topic} near {L.CAPITALS[place]}.",
        f"The {topic} near {place} lies to the {rng.choice(['north', 'south', 'east', 'west'])} "
        f"of {L.CAPITALS[place]}.",
    ])


def _fact(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.25:
        animal = rng.choice(list(L.ANIMALS))
        return f"The {animal} {L.ANIMALS[animal]}."
    if kind < 0.5:
        thing = rng.choice(list(L.COLOURS))
        return f"The colour of the {thing} is {L.COLOURS[thing]}."
    if kind < 0.7:
        a, b = rng.randint(0, 6), rng.randint(0, 6)
        return f"{_cap(L.NUMBERS[a])} plus {L.NUMBERS[b]} is {L.NUMBERS[a + b]}."
    if kind < 0.85:
        i = rng.randrange(11)
        return f"The month after {L.MONTHS[i]} is {L.MONTHS[i + 1]}."
    return rng.choice(L.SCIENCE)


def _qa(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.3:
        place = rng.choice(L.PLACES)
        return f"Question: What is the capital of {place}?\nAnswer: {L.CAPITALS[place]}"
    if kind < 0.55:
        animal = rng.choice(list(L.ANIMALS))
        return f"Question: What does the {animal} do?\nAnswer: It {L.ANIMALS[animal]}"
    if kind < 0.8:
        thing = rng.choice(list(L.COLOURS))
        return f"Question: What colour is the {thing}?\nAnswer: {L.COLOURS[thing]}"
    a, b = rng.randint(0, 6), rng.randint(0, 6)
    return f"Question: What is {L.NUMBERS[a]} plus {L.NUMBERS[b]}?\nAnswer: {L.NUMBERS[a + b]}"


def generic_text(rng: random.Random) -> str:
    """A short neutral paragraph: encyclopedic sentences, facts or a question/answer line."""
    r = rng.random()
    if r < 0.4:
        return " ".join(_encyclopedia(rng) for _ in range(rng.randint(1, 3)))
    if r < 0.7:
        return " ".join(_fact(rng) for _ in range(rng.randint(2, 4)))
    return _qa(rng)


def training_documents(seed: int, n_docs: int, exclude: set[str] = frozenset(), prompted_share: float = 0.8,
                       bare_share: float = 0.05, negation: float = NEGATION_SHARE) -> list[str]:
    """Training documents: `prompted_share` prompted reviews, `bare_share` bare reviews, the rest generic
    text; `exclude` holds held-out review texts that must not be trained on."""
    if not (0 <= prompted_share and 0 <= bare_share and prompted_share + bare_share <= 1):
        raise ValueError(f"bad document shares: prompted {prompted_share}, bare {bare_share}")
    rng = random.Random(seed)
    docs = []
    while len(docs) < n_docs:
        r = rng.random()
        if r < prompted_share + bare_share:
            label = rng.randrange(2)
            text = review(rng, bool(label), negation=negation)
            if text in exclude:
                continue
            docs.append(sentiment_prompt(text, label) if r < prompted_share else text)
        else:
            docs.append(generic_text(rng))
    return docs


@dataclass(frozen=True)
class DemoData:
    reviews_test: list[dict]
    unseen_test: list[dict]
    generic_calib: list[dict]
    reviews_calib: list[dict]


def demo_data(seed: int, n_test: int = 400, n_calib: int = 400, negation: float = NEGATION_SHARE) -> DemoData:
    """The committed evaluation and calibration sets. Calibration reviews are bare texts (no prompt)."""
    rng = random.Random(seed + 1_000_003)
    reviews_test = labelled_reviews(rng, n_test, negation=negation)
    unseen_test = labelled_reviews(rng, n_test, UNSEEN, negation)
    generic = [{"text": generic_text(rng)} for _ in range(n_calib)]
    calib = [{"text": review(rng, bool(rng.randrange(2)), negation=negation)} for _ in range(n_calib)]
    return DemoData(reviews_test, unseen_test, generic, calib)


# ---- demo-facts: a non-sentiment multiple-choice task over facts the training text states ---------------------
FACTS_SEED_OFFSET = 2_000_003  # the facts' own random stream: the other data files do not move
FACT_VARIANTS = 2  # each fact is asked twice, with different distractors and gold positions


def _fact_items() -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(category, question, gold, same-category pool) for every fact `_fact` and `_qa` state.

    Only facts the corpus states *consistently* are used: colours, animal sounds, sums, the month after a
    month and capitals. The encyclopedic adjectives ("The river of Corvia is wide") are drawn at random per
    sentence, so they are not facts the model could know, and the science sentences have no same-category
    distractors. Each question is the training sentence (or question/answer line) cut before its answer,
    so `question + " " + gold` occurs verbatim in the training text.
    """
    colours = tuple(dict.fromkeys(L.COLOURS.values()))
    sounds = tuple(L.ANIMALS.values())
    capitals = tuple(L.CAPITALS[p] for p in L.PLACES)
    items = []
    for thing, colour in L.COLOURS.items():
        items.append(("colour", f"The colour of the {thing} is", colour, colours))
        items.append(("colour", f"Question: What colour is the {thing}?\nAnswer:", colour, colours))
    for animal, sound in L.ANIMALS.items():
        items.append(("animal", f"The {animal}", sound, sounds))
        items.append(("animal", f"Question: What does the {animal} do?\nAnswer: It", sound, sounds))
    for a in range(7):
        for b in range(7):
            items.append(("sum", f"{_cap(L.NUMBERS[a])} plus {L.NUMBERS[b]} is", L.NUMBERS[a + b],
                          tuple(L.NUMBERS)))
            items.append(("sum", f"Question: What is {L.NUMBERS[a]} plus {L.NUMBERS[b]}?\nAnswer:",
                          L.NUMBERS[a + b], tuple(L.NUMBERS)))
    for i in range(11):
        items.append(("month", f"The month after {L.MONTHS[i]} is", L.MONTHS[i + 1], tuple(L.MONTHS)))
    for place in L.PLACES:
        items.append(("capital", f"The capital of {place} is", L.CAPITALS[place], capitals))
        items.append(("capital", f"Question: What is the capital of {place}?\nAnswer:", L.CAPITALS[place],
                      capitals))
    return items


def _distractors(rng: random.Random, category: str, gold: str, pool: tuple[str, ...],
                 others: dict[str, tuple[str, ...]]) -> list[str]:
    """Three wrong answers: one of the same category (for sums a number next to the true one) and two answers
    of other categories (another category each). Why the mix: with three same-category distractors the
    committed model is near chance (0.30; it learnt which *kind* of word completes each template, and the
    individual fact only for the animal sounds), with three other-category ones the task would test the kind
    of answer only. One same-category distractor keeps the individual facts in the score."""
    if category == "sum":
        g = L.NUMBERS.index(gold)
        same = L.NUMBERS[rng.choice([n for n in (g - 1, g + 1) if 0 <= n < len(L.NUMBERS)])]
    else:
        same = rng.choice([w for w in pool if w != gold])
    cats = rng.sample(sorted(c for c in others if c != category), 2)
    return [same] + [rng.choice(others[c]) for c in cats]


def facts_test(seed: int, variants: int = FACT_VARIANTS) -> list[dict]:
    """Rows {"question", "choices", "answer", "category"} of task `demo-facts` (like openbookqa: the prompt is
    the question itself, each choice is scored after a space). Deterministic by seed; shuffled."""
    rng = random.Random(seed + FACTS_SEED_OFFSET)
    items = _fact_items()
    answers = {category: tuple(dict.fromkeys(g for c, _, g, _ in items if c == category)) for category, *_ in items}
    rows = []
    for category, question, gold, pool in items:
        for _ in range(variants):
            choices = _distractors(rng, category, gold, pool, answers)
            rng.shuffle(choices)
            answer = rng.randrange(4)
            choices.insert(answer, gold)
            rows.append({"question": question, "choices": choices, "answer": answer, "category": category})
    rng.shuffle(rows)
    return rows
