"""How many objects an expression refers to, read from its words: 1, a number, or "many".

Generalized REC (gRefCOCO) expressions may name one object, several, or none; the text can
say one or several ("the two dogs", "both cups", "all people", "cats and dogs") but never
none, so the reading is ``1``, an integer ``n > 1`` or ``MANY``. The LLM that extracts the
target can answer it in the same call (``prompts/target_extraction_count.txt``);
``read_count`` is the model-free reading used as fallback, from the target phrase and
the counting words just before it:

- numerals and number words ("2 dogs", "three zebras", "a pair of shoes", "the two kids"; but
  "a pair of scissors" is one);
- "both" (2); "all", "each", "every", "several", "many", "multiple", "various" (many);
- the head noun's plural ("the women", "glasses on the table" is many; "the bus", "the
  glass" one), with pluralia tantum ("pants", "scissors", "jeans") one;
- coordinated noun phrases ("the man and the dog", "cats and dogs": one per conjunct,
  "many" when a conjunct is plural), but not coordinated adjectives ("the red and white bus").
"""

from __future__ import annotations

import re
from typing import Any, Literal, Union

MANY = "many"
ExpectedCount = Union[int, Literal["many"]]

NUMBER_WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "both": 2, "pair": 2, "couple": 2,
}
MANY_WORDS = {"all", "each", "every", "several", "many", "multiple", "various", "some", "these", "those", "group",
              "bunch", "lots"}
DETERMINERS = {"the", "a", "an", "this", "that", "these", "those", "my", "his", "her", "its", "their", "our", "your"}
IRREGULAR_PLURALS = {"men", "women", "people", "children", "feet", "teeth", "mice", "geese", "oxen", "dice", "police",
                     "cattle", "ppl"}
# Words ending in s that name one thing (or one pair): never read as plurals.
SINGULAR_S = {"bus", "glass", "grass", "dress", "lens", "species", "series", "news", "pants", "jeans", "shorts",
              "trousers", "scissors", "glasses", "sunglasses", "binoculars", "headphones", "tongs", "pliers", "this",
              "his", "its", "is", "was", "has", "yes", "gas", "plus", "canvas", "cactus", "octopus", "walrus",
              "bonus", "campus", "virus", "status", "iris", "tennis", "chess", "mattress", "cross", "boss", "class",
              "kiss", "moss", "press", "compass", "harness", "address", "business", "lotus", "circus",
              "hippopotamus", "rhinoceros", "bass", "chassis", "corps", "mess", "princess", "waitress",
              "actress", "goddess", "hostess", "lass", "bliss", "us", "thus", "towards", "across", "less", "unless"}
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_CONJUNCTION = re.compile(r"\s*(?:,\s*and\s+|,\s*|\s+and\s+|\s*&\s*)")


def read_count(expression: str, target_span: tuple[int, int] | None = None) -> ExpectedCount:
    """The model-free reading (see the module docstring); ``target_span`` is the target phrase's
    character span (default: the heuristic target's)."""
    if not expression or not expression.strip():
        return 1
    if target_span is None:
        from .align import heuristic_target

        _, target_span = heuristic_target(expression)
    start, end = target_span
    lead = _WORD.findall(expression[:start].lower())[-2:]  # counting words just before the target
    phrase = expression[start:end].lower()
    words = [word for word in lead if word in NUMBER_WORDS or word in MANY_WORDS or word in DETERMINERS
             or word.isdigit()] + _WORD.findall(phrase)
    counted = _counting_word(words)
    if counted is not None:
        return counted
    conjuncts = _noun_conjuncts(phrase)
    if len(conjuncts) > 1:
        return MANY if any(_is_plural(_head(part)) for part in conjuncts) else len(conjuncts)
    return MANY if _is_plural(_head(phrase)) else 1


def parse_count(value: Any) -> ExpectedCount | None:
    """A count from an LLM's answer ("1", 2, "two", "many", "several"); ``None`` when unreadable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and float(value).is_integer() and value >= 1:
        return int(value)
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    if text.isdigit() and int(text) >= 1:
        return int(text)
    if text in NUMBER_WORDS:
        return NUMBER_WORDS[text]
    if text in MANY_WORDS or text in ("multiple", "many", "plural", "more than one"):
        return MANY
    return None


def _counting_word(words: list[str]) -> ExpectedCount | None:
    for index, word in enumerate(words):
        if word.isdigit() and 1 <= int(word) <= 1000:
            return int(word)
        if word in ("pair", "couple"):
            if index + 2 < len(words) and words[index + 1] == "of":
                # "a pair of shoes": two objects; "a pair of scissors": one
                following = [word for word in words[index + 2:] if word not in DETERMINERS]
                return 1 if following and following[0] in SINGULAR_S else 2
            continue
        if word == "one":
            if index + 1 < len(words) and words[index + 1] == "of":  # "one of the dogs": one
                return 1
            continue
        if word in NUMBER_WORDS:
            return NUMBER_WORDS[word]
        if word in MANY_WORDS and word not in ("these", "those", "some"):
            return MANY  # "each chair", "every chair": several objects although the noun is singular
    return None


def _noun_conjuncts(phrase: str) -> list[str]:
    """The coordinated noun phrases of ``phrase``; one element when it coordinates none."""
    parts = [part for part in _CONJUNCTION.split(phrase.strip()) if part]
    if len(parts) < 2:
        return [phrase]
    later = parts[1:]
    # A later conjunct opening with a determiner, or single nouns on both sides ("cats and dogs",
    # "man and woman"), coordinate objects; "red and white bus" coordinates adjectives.
    if all(_WORD.findall(part)[:1] and _WORD.findall(part)[0] in DETERMINERS | set(NUMBER_WORDS) for part in later):
        return parts
    if all(len(_content(part)) == 1 for part in parts):
        return parts
    return [phrase]


def _content(part: str) -> list[str]:
    return [word for word in _WORD.findall(part) if word not in DETERMINERS]


def _head(phrase: str) -> str:
    words = _WORD.findall(phrase.lower())
    if "of" in words[1:]:  # "a pair of shoes", "the color of the cars": the head comes first
        words = words[: words.index("of", 1)]
    return words[-1] if words else ""


def _is_plural(word: str) -> bool:
    if word in IRREGULAR_PLURALS:
        return True
    if word in SINGULAR_S or len(word) <= 3 or "'" in word:
        return False
    return word.endswith("s") and not word.endswith(("ss", "us", "is", "ous"))
