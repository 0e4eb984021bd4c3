"""The skills world: a seeded fictional world plus verifiable skills, all generated offline.

Everything the default experiment needs comes from here (the tiny base's pretraining text, which states the world's
facts and demonstrates its skills in prose, from `corpus`):
  - the BULK SFT pool (instruction/response pairs with realistic defects),
  - held-out eval prompts for the lm-eval tasks in tasks/.

The skills are closed worlds sized for a <1M-parameter model: small-number arithmetic, facts about fictional countries,
a small lexicon, number words and word counting. (Measured: such a model memorises a 140-item table in 300 steps but
does not learn in-context copying on a CPU budget, so no skill asks it to copy from the prompt.) Every item has one
correct answer, so a verifier can check any response. Eval prompts are held out as (item, phrasing) pairs: 1 in 4 is
reserved for evaluation and never appears in the pool, so the eval asks known things in words not trained on.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass, field

from harness.core.ids import stable_hash

SKILLS = ("arith", "facts", "words", "format")
WORLD_SEED = 0
N_COUNTRIES = 40

# Training phrasings per operation; the first is the "house" template that a monotonous pool over-uses.
TEMPLATES: dict[str, dict[str, list[str]]] = {
    "arith": {
        "add": ["What is {a} + {b}?", "Compute {a} plus {b}.", "Add {a} and {b}.", "{a} + {b} = ?"],
        "sub": ["What is {a} - {b}?", "Compute {a} minus {b}.", "Subtract {b} from {a}.", "{a} - {b} = ?"],
    },
    "facts": {
        "capital": ["What is the capital of {c}?", "Name the capital city of {c}.", "Which city is the capital of {c}?"],
        "language": ["What language is spoken in {c}?", "Name the language of {c}.", "Which language do people in {c} speak?"],
        "currency": ["What is the currency of {c}?", "Name the currency used in {c}.", "Which currency does {c} use?"],
        "animal": ["What is the national animal of {c}?", "Name the national animal of {c}.", "Which animal is the symbol of {c}?"],
    },
    "words": {
        "opposite": ["What is the opposite of {x}?", "Give the antonym of {x}.", "Name the opposite of the word {x}."],
        "kind": ["What kind of animal is the {x}?", "Is the {x} a bird, mammal, reptile or amphibian?",
                 "To which class of animals does the {x} belong?"],
    },
    "format": {
        "count": ["How many words are in this list: {ws}?", "Count the words: {ws}.", "How many words does this list have: {ws}?"],
        "spell": ["Write the number {a} in words.", "Spell out the number {a}.", "How is {a} written as a word?"],
        "digit": ["Write {x} as a digit.", "Give the numeral for {x}.", "Which number is {x}?"],
    },
}

# Phrasings that never appear in training: the eval set's test of generalisation to new wording.
UNSEEN_TEMPLATES: dict[str, dict[str, str]] = {
    "arith": {"add": "Calculate the sum of {a} and {b}.", "sub": "Find the difference {a} minus {b}."},
    "facts": {"capital": "{c} has which city as its capital?", "language": "People in {c} speak which language?",
              "currency": "In {c}, what money do people use?", "animal": "{c} has which national animal?"},
    "words": {"opposite": "Tell me the word that means the reverse of {x}.",
              "kind": "The {x} is what sort of animal?"},
    "format": {"count": "Tell me how many words this list has: {ws}.", "spell": "Give {a} spelled with letters.",
               "digit": "Turn the word {x} into a number."},
}

SYLLABLES = ["ka", "lo", "ven", "mar", "ti", "sa", "dor", "el", "qui", "ra", "zen", "bo", "lu", "fen", "ar", "mi",
             "tho", "va", "rin", "os", "pe", "gal", "dun", "ny", "cor", "ish", "um", "wel", "tra", "hal"]
ANIMAL_CLASS = {"otter": "mammal", "heron": "bird", "lynx": "mammal", "badger": "mammal", "falcon": "bird",
                "tortoise": "reptile", "salamander": "amphibian", "ibex": "mammal", "marten": "mammal",
                "crane": "bird", "jackal": "mammal", "walrus": "mammal", "gecko": "reptile", "osprey": "bird",
                "bison": "mammal", "frog": "amphibian", "pelican": "bird", "viper": "reptile", "toad": "amphibian",
                "owl": "bird"}
ANIMALS = list(ANIMAL_CLASS)
ANTONYM_PAIRS = [("hot", "cold"), ("big", "small"), ("fast", "slow"), ("early", "late"), ("light", "dark"),
                 ("open", "closed"), ("high", "low"), ("long", "short"), ("full", "empty"), ("old", "new"),
                 ("rich", "poor"), ("wet", "dry"), ("hard", "soft"), ("strong", "weak"), ("happy", "sad"),
                 ("near", "far"), ("thick", "thin"), ("loud", "quiet"), ("clean", "dirty"), ("young", "aged")]
OPPOSITE = {a: b for a, b in ANTONYM_PAIRS} | {b: a for a, b in ANTONYM_PAIRS}
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]


@dataclass(frozen=True)
class Country:
    name: str
    capital: str
    language: str
    currency: str
    animal: str


@dataclass(frozen=True)
class World:
    countries: tuple[Country, ...]
    words: tuple[str, ...]

    def fact(self, country: Country, relation: str) -> str:
        return getattr(country, relation)


def _name(rng: random.Random, n_syllables: int, used: set[str]) -> str:
    while True:
        name = "".join(rng.choice(SYLLABLES) for _ in range(n_syllables)).capitalize()
        if name not in used and 4 <= len(name) <= 10:
            used.add(name)
            return name


@functools.lru_cache(maxsize=4)
def build_world(seed: int = WORLD_SEED) -> World:
    rng = random.Random(seed)
    used: set[str] = set()
    countries = []
    for _ in range(N_COUNTRIES):
        name = _name(rng, 3, used)
        countries.append(Country(
            name=name,
            capital=_name(rng, 2, used),
            language=_name(rng, 2, used) + "ish",
            currency=_name(rng, 2, used).lower(),
            animal=rng.choice(ANIMALS),
        ))
    return World(countries=tuple(countries), words=tuple(_common_words()))


def _common_words() -> list[str]:
    """Lower-case English words of 4-8 letters from CPython's pydoc topics, most frequent first."""
    from collections import Counter

    from pydoc_data.topics import topics

    counts = Counter(w for text in topics.values() for w in re.findall(r"\b[a-z]{4,8}\b", text))
    return sorted((w for w, n in counts.items() if n >= 8), key=lambda w: (-counts[w], w))[:600]


# ----------------------------------------------------------------------------------------------------------------
# Skill items: (skill, op, params) -> prompt fields and the one correct answer.


@dataclass(frozen=True)
class Item:
    skill: str
    op: str
    params: tuple
    fields: dict = field(hash=False)
    answer: str = ""


def make_item(skill: str, op: str, params: tuple, world: World | None = None) -> Item:
    """The item an (op, params) pair denotes; raises ValueError for unknown skills or ops."""
    if skill == "arith" and op in ("add", "sub"):
        a, b = params
        return Item(skill, op, (a, b), {"a": a, "b": b}, str(a + b if op == "add" else a - b))
    if skill == "facts" and op in TEMPLATES["facts"]:
        c = (world or build_world()).countries[params[0]]
        return Item(skill, op, (params[0],), {"c": c.name}, getattr(c, op))
    if skill == "words" and op == "opposite":
        return Item(skill, op, (params[0],), {"x": params[0]}, OPPOSITE[params[0]])
    if skill == "words" and op == "kind":
        return Item(skill, op, (params[0],), {"x": params[0]}, ANIMAL_CLASS[params[0]])
    if skill == "format" and op == "count":
        return Item(skill, op, tuple(params), {"ws": ", ".join(params)}, str(len(params)))
    if skill == "format" and op == "spell":
        return Item(skill, op, (params[0],), {"a": params[0]}, NUMBER_WORDS[params[0]])
    if skill == "format" and op == "digit":
        return Item(skill, op, (params[0],), {"x": params[0]}, str(NUMBER_WORDS.index(params[0])))
    raise ValueError(f"unknown skill/op {skill}/{op}; expected one of "
                     + ", ".join(f"{s}/{o}" for s in TEMPLATES for o in TEMPLATES[s]))


def sample_item(world: World, skill: str, rng: random.Random) -> Item:
    op = rng.choice(list(TEMPLATES[skill]))
    if skill == "arith":
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        params = (a, b) if op == "add" else (max(a, b), min(a, b))
    elif skill == "facts":
        params = (rng.randrange(len(world.countries)),)
    elif op == "opposite":
        params = (rng.choice(sorted(OPPOSITE)),)
    elif op == "kind":
        params = (rng.choice(ANIMALS),)
    elif op == "count":
        params = tuple(rng.sample(world.words, rng.randint(2, 6)))
    elif op == "spell":
        params = (rng.randint(0, 20),)
    else:
        params = (rng.choice(NUMBER_WORDS),)
    return make_item(skill, op, params, world)


def is_eval_prompt(item: Item, template: int) -> bool:
    """1 in 4 (item, training phrasing) pairs is reserved for evaluation; a word list for `count` is new anyway."""
    return stable_hash("eval", item.skill, item.op, item.params, template) % 4 == 0


def render(item: Item, template: str) -> str:
    return template.format(**item.fields)


def verify(skill: str, op: str, params: tuple, response: str, world: World | None = None) -> bool:
    """The programmatic verifier: is `response` exactly the correct answer (surrounding whitespace ignored)?"""
    return response.strip() == make_item(skill, op, tuple(params), world).answer


# ----------------------------------------------------------------------------------------------------------------
# The BULK pool: realistic SFT data with defects at configurable rates.

DEFAULT_MIX = {"arith": 0.55, "facts": 0.15, "words": 0.2, "format": 0.1}  # skewed, as scraped data is
DEFAULT_DEFECTS = {"wrong": 0.12, "truncated": 0.05, "off_format": 0.06, "filler": 0.08,
                   "exact_dup": 0.08, "near_dup": 0.08}
HOUSE_TEMPLATE_SHARE = 0.7  # monotony: 70% of pool prompts use the skill's first template

FILLERS = ["Sure! The answer is {r}. Let me know if you need anything else.", "Great question. {r}",
           "{r}. I hope this helps!", "Of course, here you go: {r}"]


def _wrong_answer(item: Item, rng: random.Random, world: World) -> str:
    if item.answer.isdigit():
        n, d = int(item.answer), rng.choice([-3, -2, -1, 1, 2, 3])
        return str(n + d if n + d >= 0 else n - d)  # off by a little, never negative, never right
    pool = {"opposite": sorted(OPPOSITE), "kind": sorted(set(ANIMAL_CLASS.values())), "spell": NUMBER_WORDS}.get(
        item.op) or sorted({world.fact(c, item.op) for c in world.countries})
    return rng.choice([x for x in pool if x != item.answer])


def _off_format(item: Item, rng: random.Random) -> str:
    return rng.choice([f"The answer is {item.answer}.", f"answer: {item.answer.lower()}", f"[{item.answer}]",
                       f"{item.answer}\n\n(computed)"])


def _near_dup_prompt(prompt: str, rng: random.Random) -> str:
    """Case, punctuation and spacing variants, or one typo (two adjacent letters swapped in the longest word)."""
    words = prompt.split(" ")
    i = max(range(len(words)), key=lambda k: len(words[k]))
    w = words[i]
    j = rng.randrange(1, max(2, len(w) - 2))
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:] if len(w) >= 4 else w
    return rng.choice([prompt.lower(), prompt.rstrip(".?") + " ?", "  " + prompt, prompt.replace(" ", "  ", 1),
                       " ".join(words)])


def generate_pool(size: int = 8000, seed: int = 0, mix: dict[str, float] | None = None,
                  defects: dict[str, float] | None = None) -> list[dict]:
    """The BULK pool. Each row: id, skill, op, params, prompt, response, template, defect ('' when clean)."""
    mix = {**DEFAULT_MIX, **(mix or {})}
    defects = {**DEFAULT_DEFECTS, **(defects or {})}
    world = build_world()
    rng = random.Random(stable_hash("pool", seed))
    skills, weights = list(mix), [mix[s] for s in mix]
    rows: list[dict] = []
    while len(rows) < size:
        r = rng.random()
        if rows and r < defects["exact_dup"]:
            rows.append({**rng.choice(rows), "defect": "exact_dup"})
            continue
        if rows and r < defects["exact_dup"] + defects["near_dup"]:
            src = rng.choice(rows)
            rows.append({**src, "prompt": _near_dup_prompt(src["prompt"], rng), "defect": "near_dup"})
            continue
        skill = rng.choices(skills, weights)[0]
        item = sample_item(world, skill, rng)
        allowed = [t for t in range(len(TEMPLATES[skill][item.op])) if not is_eval_prompt(item, t)]
        if not allowed:
            continue
        t = 0 if 0 in allowed and rng.random() < HOUSE_TEMPLATE_SHARE else rng.choice(allowed)
        response, defect = item.answer, ""
        d = rng.random()
        for name in ("wrong", "truncated", "off_format", "filler"):
            if d < defects[name]:
                defect = name
                break
            d -= defects[name]
        if defect == "wrong":
            response = _wrong_answer(item, rng, world)
        elif defect == "truncated":
            response = item.answer[: max(1, len(item.answer) // 2)] if len(item.answer) > 1 else ""
        elif defect == "off_format":
            response = _off_format(item, rng)
        elif defect == "filler":
            response = rng.choice(FILLERS).format(r=item.answer)
        rows.append({"skill": skill, "op": item.op, "params": list(item.params),
                     "prompt": render(item, TEMPLATES[skill][item.op][t]),
                     "response": response, "template": t, "defect": defect})
    return [{"id": f"pool-{seed}-{i}", **row} for i, row in enumerate(rows)]


# ----------------------------------------------------------------------------------------------------------------
# Eval data for tasks/ (written by `harness tasks build`, committed so that lm-eval can read it directly).


def eval_items(n_per_task: int = 32, seed: int = 1) -> dict[str, list[dict]]:
    """Held-out prompts per skill (reserved (item, phrasing) pairs) and a mixed set in unseen phrasings."""
    world = build_world()
    rng = random.Random(stable_hash("eval", seed))
    out: dict[str, list[dict]] = {}
    for skill in SKILLS:
        rows, seen = [], set()
        while len(rows) < n_per_task:
            item = sample_item(world, skill, rng)
            t = rng.randrange(len(TEMPLATES[skill][item.op]))
            if is_eval_prompt(item, t) and (item.op, item.params, t) not in seen:
                seen.add((item.op, item.params, t))
                rows.append({"prompt": render(item, TEMPLATES[skill][item.op][t]), "answer": item.answer,
                             "skill": skill, "op": item.op})
        out[f"skills_{skill}"] = rows
    rows, seen = [], set()
    while len(rows) < n_per_task:
        item = sample_item(world, SKILLS[len(rows) % len(SKILLS)], rng)
        if (item.op, item.params) not in seen:
            seen.add((item.op, item.params))
            rows.append({"prompt": render(item, UNSEEN_TEMPLATES[item.skill][item.op]), "answer": item.answer,
                         "skill": item.skill, "op": item.op})
    out["skills_unseen"] = rows
    return out


def fact_mc_items(n: int = 80, seed: int = 2) -> list[dict]:
    """Multiple-choice cloze questions on the world's facts: what the base knew before fine-tuning."""
    world = build_world()
    rng = random.Random(stable_hash("mc", seed))
    stems = {"capital": "The capital of {c} is", "language": "In {c}, people speak",
             "currency": "The currency of {c} is the", "animal": "The national animal of {c} is the"}
    pairs = [(ci, rel) for ci in range(len(world.countries)) for rel in stems]
    rows = []
    for ci, rel in rng.sample(pairs, n):
        c = world.countries[ci]
        answer = world.fact(c, rel)
        distractors = sorted({world.fact(o, rel) for o in world.countries} - {answer})
        choices = rng.sample(distractors, 3) + [answer]
        rng.shuffle(choices)
        rows.append({"question": stems[rel].format(c=c.name), "choices": choices, "label": choices.index(answer)})
    return rows
