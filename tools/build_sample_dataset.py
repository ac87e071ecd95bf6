"""Build ftctl's sample chat dataset: a small, deterministic stand-in for ultrachat_200k.

    python tools/build_sample_dataset.py [OUT_DIR]    (default: src/ftctl/resources/ultrachat_sample)

The real HuggingFaceH4/ultrachat_200k cannot be fetched offline, so ftctl ships this stand-in. Every
conversation is built from hand-written templates over a few dozen topic families with
``random.Random(seed)``: no network, no models, the same bytes on every run.

Records look like the real dataset's::

    {"prompt": str, "prompt_id": sha256(prompt) as 64 hex digits,
     "messages": [{"content": str, "role": "system" | "user" | "assistant"}, ...]}

``prompt`` is the content of the first user message (a system message, when there is one, comes
before it). The files are laid out the way the Hugging Face hub serves the dataset:
``data/<split>-00000-of-00001.parquet`` plus a README.md dataset card whose ``configs`` section maps
the split names to those files, so ``datasets.load_dataset(<folder>)`` finds the four splits.

A build-time tool, not part of the installed package: what ftctl needs at run time (where the sample
is, reading its records) is in ftctl.data.sample. It imports the ftctl of this checkout.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))  # this checkout's ftctl, installed or not

from ftctl.data.sample import SPLITS, default_output_dir, split_file  # noqa: E402

SEED = 20240611
MULTI_TURN_SHARE = 0.25
SYSTEM_SHARE = 0.15

Turn = tuple[str, str]
Family = Callable[[random.Random], list[Turn]]


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def _num(x: float) -> str:
    """12.0 -> '12', 6.2137 -> '6.21', 1234567 -> '1,234,567'."""
    if float(x).is_integer():
        return f"{int(x):,}"
    return f"{x:,.2f}".rstrip("0").rstrip(".")


def _a(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def _join(items: list[str], conjunction: str = "and") -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + f" {conjunction} " + items[-1]


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, int(n**0.5) + 1))


ORDINALS = [
    "first",
    "second",
    "third",
    "fourth",
    "fifth",
    "sixth",
    "seventh",
    "eighth",
    "ninth",
    "tenth",
    "eleventh",
    "twelfth",
]

CONNECTORS = [
    "Thanks! ",
    "Great, one more: ",
    "Okay. ",
    "Got it. Next question: ",
    "Nice. ",
    "Thank you. Another one: ",
    "",
]

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a friendly assistant who gives short, accurate answers.",
    "You are a patient tutor. Keep your answers brief and clear.",
    "You are a concise assistant. Answer in a few sentences at most.",
    "You are a helpful assistant for students. Explain things simply.",
    "Answer the user's questions accurately and politely.",
]


# --------------------------------------------------------------------------------------------------
# Topic families. Each returns a chain of (question, answer) turns; the first is a standalone
# question, the rest (if any) are natural follow-ups. A conversation uses as many as it needs.
# --------------------------------------------------------------------------------------------------

# country, capital, continent, main language(s) or None
COUNTRIES = [
    ("France", "Paris", "Europe", "French"),
    ("Germany", "Berlin", "Europe", "German"),
    ("Italy", "Rome", "Europe", "Italian"),
    ("Spain", "Madrid", "Europe", "Spanish"),
    ("Portugal", "Lisbon", "Europe", "Portuguese"),
    ("Japan", "Tokyo", "Asia", "Japanese"),
    ("China", "Beijing", "Asia", "Mandarin Chinese"),
    ("India", "New Delhi", "Asia", "Hindi and English"),
    ("Brazil", "Brasília", "South America", "Portuguese"),
    ("Argentina", "Buenos Aires", "South America", "Spanish"),
    ("Canada", "Ottawa", "North America", "English and French"),
    ("Mexico", "Mexico City", "North America", "Spanish"),
    ("Egypt", "Cairo", "Africa", "Arabic"),
    ("Kenya", "Nairobi", "Africa", "Swahili and English"),
    ("Nigeria", "Abuja", "Africa", "English"),
    ("Australia", "Canberra", "Oceania", "English"),
    ("New Zealand", "Wellington", "Oceania", "English and Māori"),
    ("Norway", "Oslo", "Europe", "Norwegian"),
    ("Sweden", "Stockholm", "Europe", "Swedish"),
    ("Finland", "Helsinki", "Europe", "Finnish and Swedish"),
    ("Poland", "Warsaw", "Europe", "Polish"),
    ("Greece", "Athens", "Europe", "Greek"),
    ("Peru", "Lima", "South America", "Spanish"),
    ("Chile", "Santiago", "South America", "Spanish"),
    ("Colombia", "Bogotá", "South America", "Spanish"),
    ("South Korea", "Seoul", "Asia", "Korean"),
    ("Thailand", "Bangkok", "Asia", "Thai"),
    ("Vietnam", "Hanoi", "Asia", "Vietnamese"),
    ("Ireland", "Dublin", "Europe", "English and Irish"),
    ("Austria", "Vienna", "Europe", "German"),
    ("Hungary", "Budapest", "Europe", "Hungarian"),
    ("the Czech Republic", "Prague", "Europe", "Czech"),
    ("Ghana", "Accra", "Africa", "English"),
    ("the Philippines", "Manila", "Asia", "Filipino and English"),
    ("Cuba", "Havana", "North America", "Spanish"),
    ("Denmark", "Copenhagen", "Europe", "Danish"),
    ("Iceland", "Reykjavík", "Europe", "Icelandic"),
    ("Ethiopia", "Addis Ababa", "Africa", None),
]


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def fam_capitals(rng: random.Random) -> list[Turn]:
    picks = rng.sample(COUNTRIES, 3)
    country, capital, _, _ = picks[0]
    q = rng.choice(
        [
            f"What is the capital of {country}?",
            f"Which city is the capital of {country}?",
            f"Can you tell me the capital city of {country}?",
            f"What's the capital of {country}?",
        ]
    )
    a = rng.choice(
        [
            f"The capital of {country} is {capital}.",
            f"{capital} is the capital of {country}.",
        ]
    )
    turns = [(q, a)]
    for country2, capital2, _, _ in picks[1:]:
        turns.append(
            (
                rng.choice([f"And what about {country2}?", f"How about {country2}?"]),
                f"The capital of {country2} is {capital2}.",
            )
        )
    return turns


def fam_reverse_capital(rng: random.Random) -> list[Turn]:
    country, capital, continent, language = rng.choice(COUNTRIES)
    turns = [(f"{capital} is the capital of which country?", f"{capital} is the capital of {country}.")]
    turns.append((f"Which continent is {country} in?", f"{_cap(country)} is in {continent}."))
    if language:
        turns.append(
            (
                "What language do people speak there?",
                f"The main language spoken in {country} is {language}."
                if " and " not in language
                else f"The main languages spoken in {country} are {language}.",
            )
        )
    return turns


def fam_continent(rng: random.Random) -> list[Turn]:
    country, capital, continent, _ = rng.choice(COUNTRIES)
    q = rng.choice([f"On which continent is {country}?", f"Which continent is {country} part of?"])
    return [(q, f"{_cap(country)} is in {continent}. Its capital is {capital}.")]


def fam_arithmetic(rng: random.Random) -> list[Turn]:
    op = rng.choice("+-*/")
    if op == "+":
        a, b = rng.randint(2, 500), rng.randint(2, 500)
        r = a + b
        q = rng.choice(
            [
                f"What is {a} + {b}?",
                f"Can you add {a} and {b} for me?",
                f"What do you get when you add {a} to {b}?",
            ]
        )
        ans = rng.choice([f"{a} + {b} = {r}.", f"{a} plus {b} equals {r}."])
    elif op == "-":
        a, b = rng.randint(20, 900), rng.randint(2, 200)
        r = a - b
        q = rng.choice([f"What is {a} - {b}?", f"What is {a} minus {b}?", f"Subtract {b} from {a}."])
        ans = rng.choice([f"{a} - {b} = {r}.", f"{a} minus {b} equals {r}."])
    elif op == "*":
        a, b = rng.randint(2, 30), rng.randint(2, 20)
        r = a * b
        q = rng.choice([f"What is {a} times {b}?", f"What's {a} multiplied by {b}?", f"Calculate {a} x {b}."])
        ans = rng.choice([f"{a} times {b} is {r}.", f"{a} × {b} = {r}."])
    else:
        b, r = rng.randint(2, 15), rng.randint(2, 40)
        a = b * r
        q = rng.choice(
            [f"What is {a} divided by {b}?", f"What's {a} / {b}?", f"How many times does {b} go into {a}?"]
        )
        ans = f"{a} divided by {b} is {r}."
    turns = [(q, ans)]
    k = rng.randint(2, 9)
    turns.append((f"Now multiply that by {k}.", f"{r} times {k} is {r * k}."))
    m = rng.randint(1, 50)
    turns.append((f"And if you subtract {m} from that?", f"{r * k} minus {m} is {r * k - m}."))
    return turns


# name, unit pair, factor, exact?
CONVERSIONS = [
    ("kilometers", "miles", 0.621371, False, (1, 100)),
    ("miles", "kilometers", 1.609344, False, (1, 60)),
    ("kilograms", "pounds", 2.20462, False, (1, 120)),
    ("pounds", "kilograms", 0.453592, False, (1, 200)),
    ("meters", "centimeters", 100, True, (1, 50)),
    ("hours", "minutes", 60, True, (1, 24)),
    ("minutes", "seconds", 60, True, (1, 60)),
    ("liters", "milliliters", 1000, True, (1, 20)),
    ("inches", "centimeters", 2.54, True, (1, 48)),
    ("feet", "meters", 0.3048, True, (1, 100)),
    ("days", "hours", 24, True, (1, 30)),
    ("kilobytes", "bytes", 1024, True, (1, 16)),
]


def _convert(rng: random.Random, spec: tuple) -> tuple[int, str]:
    src, dst, factor, exact, (lo, hi) = spec
    v = rng.randint(lo, hi)
    result = v * factor
    src_n = src if v != 1 else {"feet": "foot", "inches": "inch"}.get(src, src[:-1])
    word = "is" if exact else "is about"
    return v, f"{v} {src_n} {word} {_num(round(result, 2))} {dst}."


def fam_conversion(rng: random.Random) -> list[Turn]:
    spec = rng.choice(CONVERSIONS)
    src, dst = spec[0], spec[1]
    v, ans = _convert(rng, spec)
    src_n = src if v != 1 else {"feet": "foot", "inches": "inch"}.get(src, src[:-1])
    q = rng.choice(
        [
            f"How many {dst} are in {v} {src_n}?",
            f"Convert {v} {src_n} to {dst}.",
            f"What is {v} {src_n} in {dst}?",
        ]
    )
    turns = [(q, ans)]
    v2, ans2 = _convert(rng, spec)
    src_n2 = src if v2 != 1 else {"feet": "foot", "inches": "inch"}.get(src, src[:-1])
    turns.append((f"And {v2} {src_n2}?", ans2))
    return turns


def fam_temperature(rng: random.Random) -> list[Turn]:
    c = rng.choice(range(-40, 105, 5))
    f = c * 9 / 5 + 32
    if rng.random() < 0.5:
        q = rng.choice([f"What is {c} degrees Celsius in Fahrenheit?", f"Convert {c}°C to Fahrenheit."])
        ans = f"{c}°C is {_num(f)}°F. Multiply by 9/5 and add 32."
    else:
        q = rng.choice(
            [f"What is {_num(f)} degrees Fahrenheit in Celsius?", f"Convert {_num(f)}°F to Celsius."]
        )
        ans = f"{_num(f)}°F is {c}°C. Subtract 32 and multiply by 5/9."
    return [(q, ans)]


# word, part of speech, definition, example sentence, synonyms, antonym
VOCAB = [
    (
        "happy",
        "adjective",
        "feeling or showing pleasure or contentment",
        "She was happy to see her old friends again.",
        ["glad", "cheerful", "joyful"],
        "sad",
    ),
    (
        "brave",
        "adjective",
        "ready to face danger or pain without showing fear",
        "The brave firefighter ran into the burning building.",
        ["courageous", "bold", "fearless"],
        "cowardly",
    ),
    (
        "ancient",
        "adjective",
        "belonging to the very distant past",
        "We visited the ruins of an ancient temple.",
        ["old", "antique", "archaic"],
        "modern",
    ),
    (
        "generous",
        "adjective",
        "willing to give more of something than is expected",
        "Our neighbor is generous with her time and always helps out.",
        ["giving", "kind", "charitable"],
        "selfish",
    ),
    (
        "rapid",
        "adjective",
        "happening in a short time or at great speed",
        "The city saw rapid growth in the last decade.",
        ["fast", "quick", "swift"],
        "slow",
    ),
    (
        "fragile",
        "adjective",
        "easily broken or damaged",
        "Be careful with that box; the glasses inside are fragile.",
        ["delicate", "breakable", "frail"],
        "sturdy",
    ),
    (
        "curious",
        "adjective",
        "eager to know or learn something",
        "The curious child asked dozens of questions about the stars.",
        ["inquisitive", "interested"],
        "indifferent",
    ),
    (
        "abundant",
        "adjective",
        "existing in large quantities; more than enough",
        "Fresh fruit is abundant at the market in summer.",
        ["plentiful", "ample", "copious"],
        "scarce",
    ),
    (
        "enormous",
        "adjective",
        "very large in size or amount",
        "An enormous wave crashed onto the beach.",
        ["huge", "gigantic", "vast"],
        "tiny",
    ),
    (
        "honest",
        "adjective",
        "truthful and free of deceit",
        "Thank you for giving me an honest answer.",
        ["truthful", "sincere", "frank"],
        "dishonest",
    ),
    (
        "calm",
        "adjective",
        "not showing nervousness, anger or other strong emotions",
        "He stayed calm during the storm.",
        ["peaceful", "relaxed", "serene"],
        "anxious",
    ),
    (
        "difficult",
        "adjective",
        "needing much effort or skill to do or understand",
        "The last exam question was difficult.",
        ["hard", "challenging", "tough"],
        "easy",
    ),
    (
        "begin",
        "verb",
        "to start doing something",
        "The concert will begin at eight o'clock.",
        ["start", "commence", "launch"],
        "end",
    ),
    (
        "purchase",
        "verb",
        "to buy something",
        "We plan to purchase a new car next year.",
        ["buy", "acquire", "obtain"],
        "sell",
    ),
    (
        "assist",
        "verb",
        "to help someone do something",
        "A nurse will assist the doctor during the procedure.",
        ["help", "aid", "support"],
        "hinder",
    ),
    (
        "observe",
        "verb",
        "to watch something carefully",
        "Scientists observe the birds from a hidden shelter.",
        ["watch", "notice", "monitor"],
        "ignore",
    ),
    (
        "construct",
        "verb",
        "to build or make something",
        "The town will construct a new bridge over the river.",
        ["build", "assemble", "erect"],
        "demolish",
    ),
    (
        "whisper",
        "verb",
        "to speak very softly",
        "She leaned over to whisper the answer.",
        ["murmur", "mutter"],
        "shout",
    ),
    (
        "journey",
        "noun",
        "an act of traveling from one place to another",
        "The journey across the mountains took three days.",
        ["trip", "voyage", "expedition"],
        None,
    ),
    (
        "habit",
        "noun",
        "something a person does regularly, often without thinking",
        "Reading before bed is a good habit.",
        ["routine", "custom", "practice"],
        None,
    ),
    (
        "knowledge",
        "noun",
        "facts, information and skills gained through experience or education",
        "Her knowledge of history is impressive.",
        ["understanding", "learning", "expertise"],
        "ignorance",
    ),
    (
        "opportunity",
        "noun",
        "a set of circumstances that makes it possible to do something",
        "The internship is a great opportunity to learn.",
        ["chance", "opening", "occasion"],
        None,
    ),
    (
        "harvest",
        "noun",
        "the process or period of gathering in crops",
        "The farmers celebrated after the apple harvest.",
        ["crop", "yield", "gathering"],
        None,
    ),
    (
        "silence",
        "noun",
        "a complete absence of sound",
        "There was silence in the room after the announcement.",
        ["quiet", "stillness", "hush"],
        "noise",
    ),
    (
        "victory",
        "noun",
        "the act of winning a game, battle or contest",
        "The team celebrated its victory in the final.",
        ["win", "triumph", "success"],
        "defeat",
    ),
    (
        "ambiguous",
        "adjective",
        "open to more than one interpretation",
        "The instructions were ambiguous, so we asked for clarification.",
        ["unclear", "vague"],
        "clear",
    ),
    (
        "diligent",
        "adjective",
        "showing care and steady effort in one's work",
        "A diligent student reviews notes every day.",
        ["hardworking", "careful", "industrious"],
        "lazy",
    ),
    (
        "ephemeral",
        "adjective",
        "lasting for a very short time",
        "The beauty of the cherry blossoms is ephemeral.",
        ["fleeting", "short-lived", "brief"],
        "permanent",
    ),
    (
        "resilient",
        "adjective",
        "able to recover quickly from difficulties",
        "Children are often remarkably resilient.",
        ["tough", "adaptable", "hardy"],
        "fragile",
    ),
    (
        "meticulous",
        "adjective",
        "showing great attention to detail",
        "He kept meticulous records of every expense.",
        ["careful", "precise", "thorough"],
        "careless",
    ),
]


def fam_definition(rng: random.Random) -> list[Turn]:
    word, pos, definition, example, syns, _ = rng.choice(VOCAB)
    q = rng.choice(
        [f"What does the word '{word}' mean?", f"Define '{word}'.", f"What is the meaning of '{word}'?"]
    )
    turns = [(q, f"'{_cap(word)}' is {_a(pos)} meaning {definition}.")]
    turns.append(
        (
            rng.choice(["Can you use it in a sentence?", "Could you give me an example sentence?"]),
            f'Sure: "{example}"',
        )
    )
    turns.append(("What are some synonyms?", f"Some synonyms for '{word}' are {_join(syns)}."))
    return turns


def fam_synonym(rng: random.Random) -> list[Turn]:
    word, _, _, _, syns, antonym = rng.choice(VOCAB)
    q = rng.choice(
        [
            f"Give me a synonym for '{word}'.",
            f"What is another word for '{word}'?",
            f"What's a synonym of {word}?",
        ]
    )
    turns = [(q, f"A synonym for '{word}' is '{syns[0]}'. You could also say {_join(syns[1:], 'or')}.")]
    if antonym:
        turns.append(("And an antonym?", f"An antonym of '{word}' is '{antonym}'."))
    return turns


def fam_antonym(rng: random.Random) -> list[Turn]:
    word, _, _, _, _, antonym = rng.choice([v for v in VOCAB if v[5]])
    q = rng.choice([f"What is the opposite of '{word}'?", f"Give me an antonym for '{word}'."])
    return [(q, f"The opposite of '{word}' is '{antonym}'.")]


SPELL_WORDS = [
    "necessary",
    "separate",
    "definitely",
    "rhythm",
    "believe",
    "receive",
    "calendar",
    "library",
    "February",
    "Wednesday",
    "government",
    "environment",
    "restaurant",
    "beautiful",
    "tomorrow",
    "accommodate",
    "embarrass",
    "occasion",
    "neighbor",
    "committee",
    "parallel",
    "maintenance",
    "tongue",
    "colonel",
    "knowledge",
    "island",
    "elephant",
    "banana",
    "computer",
    "chocolate",
    "pneumonia",
    "algorithm",
    "vacuum",
    "guarantee",
    "address",
    "mischievous",
    "privilege",
    "recommend",
    "weird",
    "science",
]


def fam_spelling(rng: random.Random) -> list[Turn]:
    word = rng.choice(SPELL_WORDS)
    letters = "-".join(word.upper())
    kind = rng.random()
    if kind < 0.5:
        q = rng.choice(
            [
                f"How do you spell '{word}'?",
                f"Can you spell the word {word} for me?",
                f"Spell '{word}' letter by letter.",
            ]
        )
        turns = [(q, f"'{word}' is spelled {letters}.")]
        turns.append(("How many letters is that?", f"'{word}' has {len(word)} letters."))
    elif kind < 0.8:
        q = f"How many letters are in the word '{word}'?"
        turns = [(q, f"The word '{word}' has {len(word)} letters: {letters}.")]
    else:
        vowels = sum(ch in "aeiou" for ch in word.lower())
        q = f"How many vowels (a, e, i, o, u) are in '{word}'?"
        turns = [(q, f"'{word}' has {vowels} vowel{'s' if vowels != 1 else ''}.")]
    return turns


HOWTO = {
    "boil an egg": [
        "Place the egg in a pot and cover it with cold water.",
        "Bring the water to a boil, then lower the heat and simmer for 9 to 12 minutes.",
        "Move the egg to cold water to cool before peeling.",
    ],
    "plant a seed": [
        "Fill a small pot with moist potting soil.",
        "Push the seed in about twice as deep as the seed is wide and cover it.",
        "Keep the soil damp and put the pot somewhere warm and bright.",
    ],
    "tie a basic knot": [
        "Make a loop in the rope.",
        "Pass one end through the loop.",
        "Pull both ends to tighten the knot.",
    ],
    "change a light bulb": [
        "Turn off the light switch and let the old bulb cool.",
        "Unscrew the old bulb counterclockwise.",
        "Screw in the new bulb clockwise until snug, then switch the light on.",
    ],
    "make a cup of tea": [
        "Boil fresh water.",
        "Pour it over a tea bag in a cup.",
        "Steep for 3 to 5 minutes, remove the bag, and add milk or sugar if you like.",
    ],
    "wash your hands properly": [
        "Wet your hands and apply soap.",
        "Scrub all surfaces, including between your fingers, for at least 20 seconds.",
        "Rinse well and dry with a clean towel.",
    ],
    "write a good email subject line": [
        "Keep it short, ideally under ten words.",
        "Say what the email is about or what you need.",
        "Put the most important words first.",
    ],
    "study for an exam": [
        "Make a schedule and start a few days early.",
        "Review your notes and test yourself with practice questions.",
        "Take short breaks and get a good night's sleep before the exam.",
    ],
    "fold a shirt": [
        "Lay the shirt face down and smooth it out.",
        "Fold each sleeve and side toward the middle.",
        "Fold the shirt in half from the bottom up, then turn it over.",
    ],
    "create a strong password": [
        "Use at least 12 characters.",
        "Mix words, numbers and symbols, or use a long passphrase.",
        "Use a different password for every account and store them in a password manager.",
    ],
    "clean a computer keyboard": [
        "Unplug the keyboard or turn the laptop off.",
        "Turn it upside down and gently shake out crumbs.",
        "Wipe the keys with a cloth lightly dampened with rubbing alcohol.",
    ],
    "start a new habit": [
        "Pick one small, specific habit.",
        "Attach it to something you already do every day.",
        "Track your progress and be patient; habits take weeks to form.",
    ],
}


def fam_howto(rng: random.Random) -> list[Turn]:
    task = rng.choice(sorted(HOWTO))
    steps = HOWTO[task]
    q = rng.choice([f"How do I {task}?", f"What are the steps to {task}?", f"Can you explain how to {task}?"])
    body = "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1))
    turns = [(q, f"Here is how to {task}:\n{body}")]
    turns.append(
        (
            "Which step is the most important?",
            f"All of them matter, but pay special attention to the first: {steps[0][0].lower()}"
            f"{steps[0][1:]}",
        )
    )
    return turns


RECIPES = {
    "scrambled eggs": (
        "eggs, butter, salt and pepper",
        "Whisk the eggs with a pinch of salt, melt butter in a pan over low heat, and "
        "stir the eggs gently until just set.",
    ),
    "pancakes": (
        "flour, milk, eggs, a little sugar, baking powder and butter",
        "Mix the ingredients into a smooth batter, pour small rounds onto a hot greased pan, "
        "and flip when bubbles form on top.",
    ),
    "a simple vinaigrette": (
        "olive oil, vinegar, mustard, salt and pepper",
        "Whisk about three parts oil with one part vinegar, a spoon of mustard, "
        "salt and pepper until it comes together.",
    ),
    "guacamole": (
        "ripe avocados, lime juice, onion, cilantro and salt",
        "Mash the avocados, then stir in lime juice, finely chopped onion, cilantro and salt to taste.",
    ),
    "plain rice": (
        "rice, water and salt",
        "Rinse the rice, simmer it covered in about twice its volume of salted water for "
        "15 to 18 minutes, then let it rest for 5 minutes.",
    ),
    "a grilled cheese sandwich": (
        "bread, cheese and butter",
        "Butter the outside of two slices of bread, put cheese between them, "
        "and cook in a pan over medium heat until golden on both sides.",
    ),
    "a fruit salad": (
        "a mix of fresh fruit such as apples, berries, grapes and oranges, plus lemon juice",
        "Cut the fruit into bite-sized pieces, toss with a little lemon juice, and chill before serving.",
    ),
    "tomato soup": (
        "tomatoes, onion, garlic, olive oil, stock and salt",
        "Soften onion and garlic in olive oil, add tomatoes and stock, simmer for 20 "
        "minutes, then blend until smooth.",
    ),
    "hummus": (
        "chickpeas, tahini, lemon juice, garlic, olive oil and salt",
        "Blend everything until smooth, adding a splash of water if it is too thick.",
    ),
}


def fam_recipe(rng: random.Random) -> list[Turn]:
    dish = rng.choice(sorted(RECIPES))
    ingredients, method = RECIPES[dish]
    q = rng.choice(
        [
            f"How do I make {dish}?",
            f"Give me a quick recipe for {dish}.",
            f"What's an easy way to make {dish}?",
        ]
    )
    turns = [(q, f"You need {ingredients}. {method}")]
    turns.append(("What ingredients do I need again?", f"For {dish} you need {ingredients}."))
    return turns


# name (with article), class, fact, diet
ANIMALS = [
    ("dolphin", "mammal", "Dolphins breathe air through a blowhole on top of their heads.", "fish and squid"),
    ("penguin", "bird", "Penguins cannot fly, but they are excellent swimmers.", "fish, krill and squid"),
    (
        "bat",
        "mammal",
        "Bats are the only mammals capable of true flight.",
        "insects, fruit or nectar, depending on the species",
    ),
    (
        "blue whale",
        "mammal",
        "The blue whale is the largest animal known to have ever lived.",
        "tiny shrimp-like animals called krill",
    ),
    ("frog", "amphibian", "Many frogs can absorb water through their skin.", "insects and worms"),
    ("owl", "bird", "Owls can turn their heads about 270 degrees.", "small mammals, insects and other birds"),
    (
        "honeybee",
        "insect",
        "Honeybees do a 'waggle dance' to tell each other where flowers are.",
        "nectar and pollen",
    ),
    (
        "elephant",
        "mammal",
        "Elephants are the largest land animals on Earth.",
        "grass, leaves, bark and fruit",
    ),
    ("giraffe", "mammal", "Giraffes are the tallest land animals.", "leaves, especially from acacia trees"),
    (
        "crocodile",
        "reptile",
        "Crocodiles have one of the strongest bites of any animal.",
        "fish, birds and mammals",
    ),
    ("octopus", "mollusk", "An octopus has three hearts and blue blood.", "crabs, shrimp and fish"),
    (
        "shark",
        "fish",
        "A shark's skeleton is made of cartilage, not bone.",
        "fish, seals and other sea animals, depending on the species",
    ),
    ("camel", "mammal", "A camel's hump stores fat, not water.", "grasses, leaves and desert plants"),
    ("koala", "mammal", "Koalas sleep for up to 20 hours a day.", "eucalyptus leaves"),
    ("hummingbird", "bird", "Hummingbirds can fly backwards.", "nectar and small insects"),
    (
        "snake",
        "reptile",
        "Snakes use their tongues to pick up scents.",
        "rodents, eggs, insects and other animals",
    ),
    ("butterfly", "insect", "Butterflies taste with sensors on their feet.", "nectar from flowers"),
    (
        "kangaroo",
        "mammal",
        "A baby kangaroo, called a joey, grows inside its mother's pouch.",
        "grasses and leaves",
    ),
    (
        "cheetah",
        "mammal",
        "The cheetah is the fastest land animal, reaching about 100 km/h in short bursts.",
        "antelopes such as gazelles and impalas",
    ),
    (
        "spider",
        "arachnid",
        "Spiders have eight legs, so they are arachnids rather than insects.",
        "insects and other small animals",
    ),
    (
        "salmon",
        "fish",
        "Salmon hatch in rivers, grow up at sea, and return to rivers to spawn.",
        "insects, shrimp and smaller fish",
    ),
    (
        "turtle",
        "reptile",
        "A turtle's shell is part of its skeleton.",
        "plants, insects or fish, depending on the species",
    ),
]


def fam_animal(rng: random.Random) -> list[Turn]:
    name, cls, fact, diet = rng.choice(ANIMALS)
    plural = name + ("es" if name.endswith("s") else "s")
    kind = rng.random()
    if kind < 0.4:
        q = rng.choice([f"Tell me an interesting fact about {plural}.", f"What's a fun fact about {plural}?"])
        turns = [(q, fact)]
        turns.append((f"What do {plural} eat?", f"{_cap(plural)} eat {diet}."))
    elif kind < 0.7:
        q = rng.choice([f"Is {_a(name)} a mammal?", f"Is {_a(name)} a mammal or not?"])
        if cls == "mammal":
            a = f"Yes, {_a(name)} is a mammal. {fact}"
        else:
            a = f"No, {_a(name)} is {_a(cls)}, not a mammal."
        turns = [(q, a)]
        turns.append(("What do they eat?", f"{_cap(plural)} eat {diet}."))
    else:
        q = f"What do {plural} eat?"
        turns = [(q, f"{_cap(plural)} eat {diet}.")]
        turns.append(("Anything else interesting about them?", fact))
    return turns


COLOR_MIX = [
    ("red", "blue", "purple"),
    ("red", "yellow", "orange"),
    ("blue", "yellow", "green"),
    ("red", "white", "pink"),
    ("black", "white", "gray"),
    ("blue", "white", "light blue"),
    ("red", "green", "a muddy brown"),
    ("yellow", "white", "cream"),
    ("blue", "orange", "a dull brown"),
]


def fam_colors(rng: random.Random) -> list[Turn]:
    if rng.random() < 0.8:
        c1, c2, result = rng.choice(COLOR_MIX)
        if rng.random() < 0.5:
            c1, c2 = c2, c1
        q = rng.choice(
            [
                f"What color do you get when you mix {c1} and {c2}?",
                f"If I mix {c1} and {c2} paint, what color will I get?",
            ]
        )
        turns = [(q, f"Mixing {c1} and {c2} paint gives you {result}.")]
    else:
        turns = [
            (
                "What are the primary colors?",
                "For paint, the traditional primary colors are red, yellow and blue. For light, "
                "they are red, green and blue.",
            )
        ]
    c1, c2, result = rng.choice(COLOR_MIX)
    turns.append((f"And {c1} with {c2}?", f"{_cap(c1)} and {c2} make {result}."))
    return turns


DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [
    ("January", 31),
    ("February", 28),
    ("March", 31),
    ("April", 30),
    ("May", 31),
    ("June", 30),
    ("July", 31),
    ("August", 31),
    ("September", 30),
    ("October", 31),
    ("November", 30),
    ("December", 31),
]


def fam_calendar(rng: random.Random) -> list[Turn]:
    kind = rng.randrange(5)
    if kind == 0:
        d = rng.randrange(7)
        n = rng.randint(1, 20)
        q = f"If today is {DAYS[d]}, what day will it be in {n} day{'s' if n > 1 else ''}?"
        turns = [(q, f"It will be {DAYS[(d + n) % 7]}.")]
        turns.append(("And what day was yesterday?", f"Yesterday was {DAYS[(d - 1) % 7]}."))
    elif kind == 1:
        i = rng.randrange(12)
        name, days = MONTHS[i]
        q = rng.choice([f"How many days are in {name}?", f"How many days does {name} have?"])
        if name == "February":
            a = "February has 28 days, or 29 in a leap year."
        else:
            a = f"{name} has {days} days."
        turns = [(q, a)]
        nxt = MONTHS[(i + 1) % 12][0]
        turns.append(("What month comes after it?", f"{nxt} comes after {name}."))
    elif kind == 2:
        i = rng.randrange(12)
        q = f"What is the {ORDINALS[i]} month of the year?"
        turns = [(q, f"The {ORDINALS[i]} month of the year is {MONTHS[i][0]}.")]
    elif kind == 3:
        i = rng.randrange(12)
        q = f"What month comes before {MONTHS[i][0]}?"
        turns = [(q, f"{MONTHS[(i - 1) % 12][0]} comes before {MONTHS[i][0]}.")]
    else:
        d = rng.randrange(7)
        q = f"What day comes after {DAYS[d]}?"
        turns = [(q, f"{DAYS[(d + 1) % 7]} comes after {DAYS[d]}.")]
        turns.append(
            (
                "Is that a weekend day?",
                "Yes, it is part of the weekend." if (d + 1) % 7 >= 5 else "No, it is a weekday.",
            )
        )
    return turns


PROGRAMMING = [
    (
        "What does a Python list do?",
        "A Python list stores an ordered collection of items that you can change. You can add, remove "
        "and reorder items, for example with append(), remove() and sort().",
    ),
    (
        "What is a dictionary in Python?",
        "A dictionary maps keys to values, like {'name': 'Ada', 'age': 36}. You look values up by key, "
        "which is fast.",
    ),
    (
        "What is the difference between a list and a tuple in Python?",
        "A list can be changed after it is created, while a tuple cannot. Tuples are written with "
        "parentheses, lists with square brackets.",
    ),
    (
        "What does a for loop do?",
        "A for loop repeats a block of code once for each item in a sequence, such as each element of "
        "a list.",
    ),
    (
        "What does the len() function do in Python?",
        "len() returns the number of items in an object, such as the characters in a string or the "
        "elements in a list.",
    ),
    (
        "How do I define a function in Python?",
        "Use the def keyword, a name, parentheses for parameters and a colon, then indent the body. For "
        "example:\ndef greet(name):\n    return 'Hello, ' + name",
    ),
    (
        "What is a variable in programming?",
        "A variable is a name that refers to a value stored in memory, so you can use and change that "
        "value later in your program.",
    ),
    (
        "What does the import statement do in Python?",
        "import loads a module so you can use the functions and classes it defines, for example "
        "import math and then math.sqrt(16).",
    ),
    (
        "What is the difference between = and == in Python?",
        "A single = assigns a value to a variable, while == compares two values and returns True or False.",
    ),
    (
        "What does return do in a function?",
        "return ends the function and sends a value back to the code that called it.",
    ),
    (
        "What is a boolean?",
        "A boolean is a value that is either True or False. Booleans are used in conditions like if "
        "statements.",
    ),
    (
        "What is recursion?",
        "Recursion is when a function calls itself to solve a smaller version of the same problem. It "
        "needs a base case so that it eventually stops.",
    ),
    (
        "What is JSON?",
        "JSON (JavaScript Object Notation) is a text format for storing and exchanging data as "
        "key-value pairs and lists. Most programming languages can read and write it.",
    ),
    (
        "What is an API?",
        "An API (application programming interface) is a defined way for one program to request data "
        "or actions from another.",
    ),
    (
        "What does `git commit` do?",
        "git commit records the staged changes as a new snapshot in the repository's history, with a "
        "message describing them.",
    ),
    (
        "What does the `ls` command do?",
        "On Linux and macOS, ls lists the files and folders in the current directory.",
    ),
    (
        "What does the `cd` command do?",
        "cd changes the current directory in a terminal, for example cd Documents.",
    ),
    (
        "What is a bug in software?",
        "A bug is a mistake in a program that makes it behave in an unexpected or incorrect way.",
    ),
    (
        "What does the append method do on a Python list?",
        "append() adds a single item to the end of the list, changing the list in place.",
    ),
    (
        "What is a string in Python?",
        "A string is a sequence of characters, written inside quotes, like 'hello' or \"world\".",
    ),
    (
        "Write a Python function that returns the square of a number.",
        "Here is one:\ndef square(x):\n    return x * x",
    ),
    (
        "Write a Python function that checks whether a number is even.",
        "Here is one:\ndef is_even(n):\n    return n % 2 == 0",
    ),
    (
        "What is a comment in Python?",
        "A comment is text the interpreter ignores. In Python it starts with #, and it is used to "
        "explain the code.",
    ),
]


def fam_programming(rng: random.Random) -> list[Turn]:
    kind = rng.random()
    if kind < 0.6:
        picks = rng.sample(PROGRAMMING, 2)
        return list(picks)
    if kind < 0.75:
        word = rng.choice(SPELL_WORDS).lower()
        return [
            (
                f"What does len('{word}') return in Python?",
                f"It returns {len(word)}, the number of characters in '{word}'.",
            )
        ]
    if kind < 0.9:
        a, b = rng.randint(5, 60), rng.randint(2, 9)
        return [
            (
                f"What is {a} % {b} in Python?",
                f"{a} % {b} is {a % b}: the % operator gives the remainder of {a} divided by {b}.",
            )
        ]
    nums = [rng.randint(0, 50) for _ in range(rng.randint(3, 6))]
    return [
        (
            f"What does sorted({nums}) return in Python?",
            f"It returns a new list in ascending order: {sorted(nums)}.",
        )
    ]


PLANETS = [
    ("Mercury", "Mercury is the smallest planet and the closest to the Sun."),
    ("Venus", "Venus is the hottest planet because its thick atmosphere traps heat."),
    ("Earth", "Earth is the only planet known to support life."),
    ("Mars", "Mars looks red because of iron oxide, or rust, on its surface."),
    ("Jupiter", "Jupiter is the largest planet in the solar system."),
    ("Saturn", "Saturn is famous for its bright rings made of ice and rock."),
    ("Uranus", "Uranus rotates on its side, tilted about 98 degrees."),
    ("Neptune", "Neptune is the farthest planet from the Sun and has very strong winds."),
]


def fam_planets(rng: random.Random) -> list[Turn]:
    i = rng.randrange(8)
    name, fact = PLANETS[i]
    if rng.random() < 0.5:
        turns = [
            (
                f"Which planet is {ORDINALS[i]} from the Sun?",
                f"{name} is the {ORDINALS[i]} planet from the Sun.",
            )
        ]
        turns.append((f"Tell me something about {name}.", fact))
    else:
        turns = [(rng.choice([f"Tell me a fact about {name}.", f"What is special about {name}?"]), fact)]
        turns.append(
            (
                "How far is it from the Sun in the order of planets?",
                f"{name} is the {ORDINALS[i]} planet from the Sun.",
            )
        )
    return turns


POLYGONS = [
    ("triangle", 3),
    ("square", 4),
    ("pentagon", 5),
    ("hexagon", 6),
    ("heptagon", 7),
    ("octagon", 8),
    ("nonagon", 9),
    ("decagon", 10),
]


def fam_shapes(rng: random.Random) -> list[Turn]:
    if rng.random() < 0.5:
        name, n = rng.choice(POLYGONS)
        turns = [(f"How many sides does {_a(name)} have?", f"{_cap(_a(name))} has {n} sides.")]
        angles = (n - 2) * 180
        turns.append(
            (
                "What do its interior angles add up to?",
                f"The interior angles of {_a(name)} add up to {angles} degrees, using (n - 2) × 180 "
                f"with n = {n}.",
            )
        )
        return turns
    w, h = rng.randint(2, 25), rng.randint(2, 25)
    turns = [
        (
            f"What is the area of a rectangle that is {w} cm wide and {h} cm tall?",
            f"The area is {w} × {h} = {w * h} square centimeters.",
        )
    ]
    turns.append(("And its perimeter?", f"The perimeter is 2 × ({w} + {h}) = {2 * (w + h)} cm."))
    return turns


def fam_numbers(rng: random.Random) -> list[Turn]:
    kind = rng.randrange(6)
    if kind == 0:
        n = rng.randint(2, 200)
        q = rng.choice([f"Is {n} a prime number?", f"Is {n} prime?"])
        if _is_prime(n):
            answer = f"Yes, {n} is prime: its only divisors are 1 and {n}."
        else:
            d = next(d for d in range(2, n) if n % d == 0)
            answer = f"No, {n} is not prime. It is divisible by {d} ({n} = {d} × {n // d})."
        turns = [(q, answer)]
        turns.append(("Is it even or odd?", f"{n} is {'even' if n % 2 == 0 else 'odd'}."))
    elif kind == 1:
        n = rng.randint(11, 999)
        q = f"Round {n} to the nearest ten."
        r = (n + 5) // 10 * 10
        turns = [(q, f"{n} rounded to the nearest ten is {r}.")]
        r100 = (n + 50) // 100 * 100
        turns.append(("And to the nearest hundred?", f"To the nearest hundred it is {r100}."))
    elif kind == 2:
        p = rng.choice([10, 20, 25, 50, 75])
        base = rng.randint(1, 40) * 4 * (5 if p in (10, 20) else 1)
        q = rng.choice([f"What is {p}% of {base}?", f"Calculate {p} percent of {base}."])
        turns = [(q, f"{p}% of {base} is {_num(base * p / 100)}.")]
    elif kind == 3:
        nums = rng.sample(range(1, 100), rng.randint(4, 7))
        turns = [
            (
                f"Sort these numbers from smallest to largest: {', '.join(map(str, nums))}.",
                ", ".join(map(str, sorted(nums))) + ".",
            )
        ]
        turns.append(("What is the largest one?", f"The largest is {max(nums)}."))
    elif kind == 4:
        nums = [rng.randint(1, 20) for _ in range(rng.randint(3, 5))]
        total = sum(nums)
        avg = total / len(nums)
        turns = [
            (
                f"What is the average of {_join([str(x) for x in nums])}?",
                f"The sum is {total} and there are {len(nums)} numbers, so the average is "
                f"{_num(round(avg, 2))}.",
            )
        ]
    else:
        a, b = rng.sample(range(1, 1000), 2)
        turns = [(f"Which is bigger, {a} or {b}?", f"{max(a, b)} is bigger than {min(a, b)}.")]
        turns.append(("By how much?", f"By {abs(a - b)}."))
    return turns


def fam_time(rng: random.Random) -> list[Turn]:
    h, m = rng.randint(0, 23), rng.choice([0, 15, 30, 45])
    add = rng.randint(1, 10)
    q = f"If it is {h:02d}:{m:02d} now, what time will it be in {add} hour{'s' if add > 1 else ''}?"
    turns = [(q, f"It will be {(h + add) % 24:02d}:{m:02d}.")]
    mins = rng.choice([15, 30, 45, 90, 120])
    total = h * 60 + m + add * 60 + mins
    turns.append(
        (f"And {mins} minutes after that?", f"Then it will be {total // 60 % 24:02d}:{total % 60:02d}.")
    )
    return turns


ELEMENTS = [
    ("gold", "Au"),
    ("silver", "Ag"),
    ("iron", "Fe"),
    ("sodium", "Na"),
    ("oxygen", "O"),
    ("hydrogen", "H"),
    ("carbon", "C"),
    ("helium", "He"),
    ("potassium", "K"),
    ("lead", "Pb"),
    ("copper", "Cu"),
    ("nitrogen", "N"),
    ("calcium", "Ca"),
    ("mercury", "Hg"),
]

SCIENCE = [
    (
        "At what temperature does water boil?",
        "At sea level, water boils at 100 degrees Celsius, which is 212 degrees Fahrenheit.",
    ),
    (
        "At what temperature does water freeze?",
        "Water freezes at 0 degrees Celsius, or 32 degrees Fahrenheit.",
    ),
    ("How many bones are in the adult human body?", "An adult human body has 206 bones."),
    (
        "What gas do plants absorb from the air?",
        "Plants absorb carbon dioxide from the air and use it in photosynthesis.",
    ),
    (
        "What is photosynthesis?",
        "Photosynthesis is the process plants use to turn sunlight, water and carbon dioxide into sugar "
        "and oxygen.",
    ),
    (
        "Why is the sky blue?",
        "Sunlight is scattered by the gases in the air, and blue light is scattered much more than red "
        "light. That scattered blue light reaches our eyes from every direction.",
    ),
    ("How fast does light travel?", "Light travels at about 300,000 kilometers per second in a vacuum."),
    (
        "What is the chemical formula for water?",
        "The chemical formula for water is H2O: two hydrogen atoms and one oxygen atom.",
    ),
    ("How many hearts does a human have?", "A human has one heart, with four chambers."),
    (
        "What causes the seasons on Earth?",
        "The seasons are caused by the tilt of Earth's axis, which changes how directly sunlight hits "
        "each hemisphere during the year.",
    ),
    (
        "What is gravity?",
        "Gravity is the force that pulls objects with mass toward each other. It keeps us on the ground "
        "and the Moon in orbit around Earth.",
    ),
    ("What is the largest organ of the human body?", "The skin is the largest organ of the human body."),
]


def fam_science(rng: random.Random) -> list[Turn]:
    if rng.random() < 0.4:
        picks = rng.sample(ELEMENTS, 3)
        name, sym = picks[0]
        turns = [(f"What is the chemical symbol for {name}?", f"The chemical symbol for {name} is {sym}.")]
        for n2, s2 in picks[1:]:
            turns.append((f"And for {n2}?", f"The symbol for {n2} is {s2}."))
        return turns
    return list(rng.sample(SCIENCE, 2))


TRANSLATIONS = {
    "hello": {"Spanish": "hola", "French": "bonjour", "German": "hallo", "Italian": "ciao"},
    "thank you": {"Spanish": "gracias", "French": "merci", "German": "danke", "Italian": "grazie"},
    "goodbye": {
        "Spanish": "adiós",
        "French": "au revoir",
        "German": "auf Wiedersehen",
        "Italian": "arrivederci",
    },
    "please": {
        "Spanish": "por favor",
        "French": "s'il vous plaît",
        "German": "bitte",
        "Italian": "per favore",
    },
    "yes": {"Spanish": "sí", "French": "oui", "German": "ja", "Italian": "sì"},
    "cat": {"Spanish": "gato", "French": "chat", "German": "Katze", "Italian": "gatto"},
    "dog": {"Spanish": "perro", "French": "chien", "German": "Hund", "Italian": "cane"},
    "water": {"Spanish": "agua", "French": "eau", "German": "Wasser", "Italian": "acqua"},
    "red": {"Spanish": "rojo", "French": "rouge", "German": "rot", "Italian": "rosso"},
    "one": {"Spanish": "uno", "French": "un", "German": "eins", "Italian": "uno"},
    "good morning": {
        "Spanish": "buenos días",
        "French": "bonjour",
        "German": "guten Morgen",
        "Italian": "buongiorno",
    },
    "book": {"Spanish": "libro", "French": "livre", "German": "Buch", "Italian": "libro"},
}


def fam_translate(rng: random.Random) -> list[Turn]:
    word = rng.choice(sorted(TRANSLATIONS))
    langs = rng.sample(sorted(TRANSLATIONS[word]), 3)
    q = rng.choice([f"How do you say '{word}' in {langs[0]}?", f"Translate '{word}' into {langs[0]}."])
    turns = [(q, f"In {langs[0]}, '{word}' is '{TRANSLATIONS[word][langs[0]]}'.")]
    for lang in langs[1:]:
        turns.append((f"And in {lang}?", f"In {lang} it is '{TRANSLATIONS[word][lang]}'."))
    return turns


PLURALS = [
    ("child", "children"),
    ("mouse", "mice"),
    ("goose", "geese"),
    ("tooth", "teeth"),
    ("foot", "feet"),
    ("person", "people"),
    ("woman", "women"),
    ("leaf", "leaves"),
    ("knife", "knives"),
    ("box", "boxes"),
    ("city", "cities"),
    ("bus", "buses"),
    ("sheep", "sheep"),
    ("ox", "oxen"),
    ("wolf", "wolves"),
    ("cactus", "cacti (or cactuses)"),
    ("potato", "potatoes"),
    ("baby", "babies"),
    ("deer", "deer"),
    ("analysis", "analyses"),
]


def fam_plural(rng: random.Random) -> list[Turn]:
    picks = rng.sample(PLURALS, 2)
    w, p = picks[0]
    q = rng.choice([f"What is the plural of '{w}'?", f"What's the plural form of {w}?"])
    turns = [(q, f"The plural of '{w}' is '{p}'.")]
    w2, p2 = picks[1]
    turns.append((f"What about '{w2}'?", f"The plural of '{w2}' is '{p2}'."))
    return turns


def fam_alphabet(rng: random.Random) -> list[Turn]:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    i = rng.randrange(1, 25)
    if rng.random() < 0.5:
        turns = [(f"What letter comes after {letters[i]}?", f"{letters[i + 1]} comes after {letters[i]}.")]
        turns.append(("And before it?", f"{letters[i - 1]} comes before {letters[i]}."))
    else:
        turns = [
            (
                f"What position is the letter {letters[i]} in the English alphabet?",
                f"{letters[i]} is letter number {i + 1} of 26.",
            )
        ]
    return turns


def fam_sort_words(rng: random.Random) -> list[Turn]:
    words = rng.sample([w.lower() for w in SPELL_WORDS], rng.randint(3, 5))
    return [(f"Put these words in alphabetical order: {', '.join(words)}.", ", ".join(sorted(words)) + ".")]


ADVICE = [
    (
        "How can I sleep better?",
        "Go to bed and wake up at the same time every day, keep your bedroom dark and cool, and avoid "
        "screens and caffeine in the hours before bed.",
    ),
    (
        "How much water should I drink a day?",
        "Needs vary, but many adults do well with around 2 liters of fluids a day, more in hot weather or "
        "when exercising. Drinking when you are thirsty is a good guide.",
    ),
    (
        "How can I reduce stress?",
        "Regular exercise, enough sleep, short breaks during the day and talking to people you trust all "
        "help. Slow, deep breathing can calm you down in the moment.",
    ),
    (
        "How do I keep a houseplant alive?",
        "Give it the right amount of light for its type, water it only when the top of the soil is dry, "
        "and use a pot with drainage holes.",
    ),
    (
        "How can I save money each month?",
        "Track your spending, set a simple budget, and move a fixed amount into savings as soon as you "
        "are paid.",
    ),
    (
        "How can I focus better when working?",
        "Put your phone away, work in short focused blocks with breaks, and decide on one task to finish "
        "before you start.",
    ),
    (
        "What is a good way to learn a new language?",
        "Practice a little every day, learn common words first, and listen to and speak the language as "
        "early as possible.",
    ),
    (
        "How do I prepare for a job interview?",
        "Research the company, practice answers to common questions out loud, and prepare a few "
        "questions of your own to ask.",
    ),
]


def fam_advice(rng: random.Random) -> list[Turn]:
    return list(rng.sample(ADVICE, 2))


NAMES = [
    "Ana",
    "Ben",
    "Chloe",
    "David",
    "Emma",
    "Farid",
    "Grace",
    "Hiro",
    "Isabel",
    "Jonas",
    "Kemi",
    "Liam",
    "Maya",
    "Noah",
    "Olga",
    "Priya",
    "Sam",
    "Tariq",
    "Uma",
    "Victor",
]
GIFTS = [
    "book",
    "scarf",
    "birthday card",
    "flowers",
    "cookies",
    "help with the move",
    "lovely dinner",
    "concert tickets",
]
RELATIONS = ["aunt", "friend", "neighbor", "teacher", "grandmother", "colleague", "brother", "cousin"]


def fam_writing(rng: random.Random) -> list[Turn]:
    name = rng.choice(NAMES)
    kind = rng.randrange(3)
    if kind == 0:
        rel, gift = rng.choice(RELATIONS), rng.choice(GIFTS)
        q = f"Write a short thank-you note to my {rel} {name} for the {gift}."
        a = (
            f"Dear {name},\nThank you so much for the {gift}. It was really thoughtful of you, and it "
            f"made my week. I hope to see you soon!"
        )
        turns = [(q, a)]
        turns.append(
            (
                "Can you make it more formal?",
                f"Dear {name},\nI would like to thank you sincerely for the {gift}. Your kindness "
                f"is greatly appreciated.\nWith best regards",
            )
        )
    elif kind == 1:
        age = rng.randint(5, 90)
        q = f"Write a one-sentence birthday message for {name}, who is turning {age}."
        turns = [
            (
                q,
                f"Happy {age}th birthday, {name}! Wishing you a year full of joy, good health and "
                f"great adventures."
                if age % 10 not in (1, 2, 3) or age in (11, 12, 13)
                else f"Happy birthday, {name}! Congratulations on turning {age}, and best wishes for a "
                f"wonderful year ahead.",
            )
        ]
    else:
        q = f"Write a polite message to {name} to reschedule our meeting to next week."
        turns = [
            (
                q,
                f"Hi {name}, would it be possible to move our meeting to next week? Something came "
                f"up on my side. Please let me know which day works best for you. Thank you!",
            )
        ]
    return turns


FAMILIES: list[tuple[Family, int]] = [
    (fam_capitals, 5),
    (fam_reverse_capital, 3),
    (fam_continent, 2),
    (fam_arithmetic, 6),
    (fam_conversion, 4),
    (fam_temperature, 2),
    (fam_definition, 4),
    (fam_synonym, 3),
    (fam_antonym, 2),
    (fam_spelling, 3),
    (fam_howto, 3),
    (fam_recipe, 3),
    (fam_animal, 4),
    (fam_colors, 2),
    (fam_calendar, 3),
    (fam_programming, 5),
    (fam_planets, 2),
    (fam_shapes, 2),
    (fam_numbers, 4),
    (fam_time, 2),
    (fam_science, 3),
    (fam_translate, 3),
    (fam_plural, 2),
    (fam_alphabet, 2),
    (fam_sort_words, 1),
    (fam_advice, 2),
    (fam_writing, 2),
]


# --------------------------------------------------------------------------------------------------
# Conversations and splits
# --------------------------------------------------------------------------------------------------


def prompt_id(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def _conversation(rng: random.Random) -> dict[str, Any]:
    families = [f for f, _ in FAMILIES]
    weights = [w for _, w in FAMILIES]
    family = rng.choices(families, weights)[0]
    n_turns = 1
    if rng.random() < MULTI_TURN_SHARE:
        n_turns = rng.choice([2, 2, 3])
    chain = family(rng)
    turns = chain[:n_turns]
    while len(turns) < n_turns:
        # The family has no natural follow-up left: ask something else, with a connector.
        q, a = rng.choices(families, weights)[0](rng)[0]
        turns.append((rng.choice(CONNECTORS) + q, a))
    messages: list[dict[str, str]] = []
    if rng.random() < SYSTEM_SHARE:
        messages.append({"content": rng.choice(SYSTEM_PROMPTS), "role": "system"})
    for q, a in turns:
        messages.append({"content": q, "role": "user"})
        messages.append({"content": a, "role": "assistant"})
    prompt = turns[0][0]
    return {"prompt": prompt, "prompt_id": prompt_id(prompt), "messages": messages}


def generate(seed: int = SEED, sizes: dict[str, int] | None = None) -> dict[str, list[dict[str, Any]]]:
    """All splits as lists of records. Prompts are unique across the whole sample (no train/test leak)."""
    sizes = dict(SPLITS if sizes is None else sizes)
    seen: set[str] = set()
    out: dict[str, list[dict[str, Any]]] = {}
    for index, (split, size) in enumerate(sizes.items()):
        rng = random.Random(f"{seed}:{index}:{split}")
        records: list[dict[str, Any]] = []
        attempts = 0
        while len(records) < size:
            attempts += 1
            if attempts > size * 50:
                raise RuntimeError(f"could not generate {size} unique prompts for {split}")
            record = _conversation(rng)
            if record["prompt"] in seen:
                continue
            seen.add(record["prompt"])
            records.append(record)
        out[split] = records
    return out


DATASET_CARD = """\
---
language:
- en
license: mit
pretty_name: ftctl ultrachat sample
size_categories:
- n<1K
task_categories:
- text-generation
configs:
- config_name: default
  data_files:
{data_files}
---

# ftctl ultrachat sample

A small synthetic chat dataset in the format of HuggingFaceH4/ultrachat_200k, generated by
`python tools/build_sample_dataset.py` (in the ftctl repository) from hand-written templates (seed
{seed}). It lets the ftctl pipeline run offline; it is not a substitute for real training data.

Each record has `prompt` (the first user message), `prompt_id` (the SHA-256 of `prompt` in hex) and
`messages` (a list of `{{"content", "role"}}` objects; roles are system, user and assistant).

| split | conversations |
|-------|---------------|
{table}
"""


def _schema():  # noqa: ANN202 - pyarrow imported lazily
    import pyarrow as pa

    message = pa.struct([("content", pa.string()), ("role", pa.string())])
    return pa.schema([("prompt", pa.string()), ("prompt_id", pa.string()), ("messages", pa.list_(message))])


def write_sample(out_dir: Path | str | None = None, seed: int = SEED) -> Path:
    """Write the sample (parquet files + README.md) under out_dir; returns the folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(out_dir) if out_dir is not None else default_output_dir()
    (root / "data").mkdir(parents=True, exist_ok=True)
    splits = generate(seed)
    schema = _schema()
    for split, records in splits.items():
        table = pa.Table.from_pylist(records, schema=schema)
        target = split_file(root, split)
        tmp = target.with_name(target.name + ".tmp")
        pq.write_table(table, tmp, compression="zstd", use_dictionary=True, write_statistics=False)
        tmp.replace(target)
    data_files = "\n".join(f"  - split: {s}\n    path: data/{s}-*" for s in splits)
    table_md = "\n".join(f"| {s} | {len(r)} |" for s, r in splits.items())
    card = DATASET_CARD.format(data_files=data_files, seed=seed, table=table_md)
    (root / "README.md").write_text(card, encoding="utf-8", newline="\n")
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tools/build_sample_dataset.py",
        description="Regenerate ftctl's ultrachat-format sample dataset.",
    )
    parser.add_argument(
        "out_dir", nargs="?", default=None, help=f"output folder (default: {default_output_dir()})"
    )
    parser.add_argument("--seed", type=int, default=SEED, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    root = write_sample(args.out_dir, seed=args.seed)
    total = 0
    for split in SPLITS:
        path = split_file(root, split)
        total += path.stat().st_size
        print(f"{path}: {path.stat().st_size} bytes")
    print(f"wrote {root} ({total} bytes of parquet)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
