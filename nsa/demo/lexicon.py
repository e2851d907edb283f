"""The demo corpus's vocabulary: review domains, sentiment words, and the held-out words of `demo-unseen`.

Everything here is synthetic and hand-written. The held-out lists (`UNSEEN_*`) must never reach training
text; `tests/nsa/demo` checks that. The unseen adjectives are *neutral descriptors* (colours, materials,
origins): a 4-layer model cannot learn the polarity of a sentiment word it has never read, so the unseen set
asks whether the model reads sentiment from context around new nouns and new descriptors (see docs/demo.md).
"""
from __future__ import annotations

# domain -> (nouns that are reviewed, aspects of them)
DOMAINS: dict[str, tuple[list[str], list[str]]] = {
    "film": (["film", "movie", "picture", "documentary", "thriller", "comedy", "drama", "sequel"],
             ["acting", "plot", "script", "soundtrack", "ending", "cast", "direction", "dialogue"]),
    "restaurant": (["restaurant", "bistro", "cafe", "diner", "pizzeria", "bakery", "steakhouse", "tavern"],
                   ["food", "service", "menu", "soup", "dessert", "staff", "coffee", "bread"]),
    "hotel": (["hotel", "inn", "resort", "hostel", "lodge", "motel", "guesthouse", "apartment"],
              ["room", "bed", "breakfast", "pool", "location", "reception", "shower", "view"]),
    "product": (["phone", "laptop", "camera", "blender", "kettle", "headset", "watch", "printer"],
                ["battery", "screen", "design", "price", "sound", "keyboard", "manual", "charger"]),
    "book": (["book", "novel", "memoir", "biography", "cookbook", "textbook", "poem", "anthology"],
             ["writing", "story", "characters", "chapters", "style", "pacing", "prose", "cover"]),
}

POSITIVE = ["good", "great", "excellent", "wonderful", "delightful", "superb", "lovely", "brilliant", "pleasant",
            "fantastic", "charming", "enjoyable", "impressive", "perfect", "beautiful", "fresh", "friendly",
            "amazing", "solid", "outstanding"]
NEGATIVE = ["bad", "terrible", "awful", "boring", "dull", "poor", "horrible", "disappointing", "mediocre",
            "bland", "rude", "broken", "dreadful", "weak", "ugly", "stale", "noisy", "annoying", "cheap",
            "miserable"]
POSITIVE_VERBS = ["loved", "enjoyed", "liked", "adored", "recommend"]
NEGATIVE_VERBS = ["hated", "disliked", "regretted", "avoid", "returned"]
INTENSIFIERS = ["very", "really", "truly", "extremely", "quite", "incredibly", "so", "absolutely"]
NEGATIONS = ["not", "never", "hardly", "not at all"]
REVIEWERS = ["I", "We", "My friend", "My family", "Everyone", "My partner"]

# Neutral descriptors and nouns usable in seen reviews.
DESCRIPTORS = ["new", "old", "small", "large", "local", "famous", "modern", "little", "busy", "quiet-looking"]

# Held out from all training text (demo-unseen only). Checked absent by the tests.
UNSEEN_NOUNS = ["zyphor", "quorbix", "vantelope", "mirrowind", "glimbert", "trastovan", "pellucor", "frandisk",
                "ostrobell", "kwendal", "lumiquad", "brovanta", "sizzelot", "dormikan", "yarbelline", "plimsock"]
UNSEEN_ASPECTS = ["gearbox", "upholstery", "marzipan", "turntable", "chandelier", "periscope", "saxophone",
                  "hammock"]
UNSEEN_DESCRIPTORS = ["turquoise", "mahogany", "tangerine", "corduroy", "lavender", "bohemian", "scandinavian",
                      "octagonal", "maroon", "velvety"]

# Generic (non-review) material: an encyclopedia of made-up but consistent facts.
TOPICS = {
    "river": ["long", "wide", "cold", "slow"], "mountain": ["tall", "steep", "rocky", "snowy"],
    "city": ["old", "crowded", "coastal", "ancient"], "forest": ["dense", "green", "dark", "quiet"],
    "lake": ["deep", "clear", "frozen", "shallow"], "island": ["remote", "tropical", "volcanic", "small"],
    "desert": ["dry", "hot", "sandy", "vast"], "bridge": ["stone", "iron", "narrow", "famous"],
}
PLACES = ["Arland", "Bessany", "Corvia", "Dunmore", "Elstow", "Fenwick", "Garrow", "Hollin", "Ivesby", "Jarrow"]
ANIMALS = {"cat": "meows", "dog": "barks", "cow": "moos", "owl": "hoots", "duck": "quacks", "lion": "roars",
           "horse": "neighs", "sheep": "bleats", "frog": "croaks", "bee": "buzzes"}
COLOURS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "blood": "red", "sun": "yellow",
           "orange": "orange", "cloud": "grey"}
CAPITALS = {c: f"{c[:3]}ton" for c in PLACES}
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
           "twelve"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
SCIENCE = ["Water boils at one hundred degrees.", "The earth goes around the sun.", "Plants need light to grow.",
           "Ice is frozen water.", "The moon goes around the earth.", "Fish breathe with gills.",
           "Metal conducts heat.", "Birds have feathers.", "A year has twelve months.", "A week has seven days.",
           "Sound travels through air.", "Rain falls from clouds."]
