"""Finding the target phrase inside its referring expression, with or without a model.

``align_target`` maps a phrase (usually an LLM's answer) to a character span of the
expression, tolerating the ways a model rewrites what it copies: case, articles,
punctuation, plural/singular and paraphrase (down to the head noun).
``heuristic_target`` is the model-free parser used when no LLM is configured and
whenever an LLM answer cannot be aligned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

from ..errors import UserInputError

Span = tuple[int, int]

DETERMINERS = frozenset(
    "the a an this that these those his her its their my your our some any each every one two three".split()
)
# Words that end the subject noun phrase: relative pronouns, prepositions and the verbs
# referring expressions use to attach relations ("the man wearing a hat").
BOUNDARY_WORDS = frozenset(
    """that which who whom whose where when while whereas
    on in at with without near by behind beside besides between under below above over
    beneath underneath inside outside across along against around among beyond from
    into onto toward towards through to for next close adjacent of atop except
    is are was were be been being has have had can could will would should may might
    wearing holding sitting standing lying laying walking riding carrying eating looking
    facing playing running talking using reading watching pointing leaning hanging resting
    parked placed located positioned situated covered filled dressed appears seems looks
    stands sits lies rests resides hangs
    closest nearest farthest furthest closer nearer""".split()
)
# Where-words that follow the head as a bare locative ("blue umbrella top right").
LOCATION_WORDS = frozenset("top bottom left right middle center centre front back far upper lower".split())
LOCATIVE_TAIL = LOCATION_WORDS | frozenset("most side corner".split())
# "there is a bus", "this is a cat", "it's a dog": the subject follows the copula.
PRESENTATIVES = frozenset("there here this that it".split())
CONTRACTED_PRESENTATIVES = frozenset("there's here's that's it's".split())
COPULAS = frozenset("is are".split())
# "which is the tallest giraffe", "which one is ...", "which bear is ...".
INTERROGATIVES = frozenset("which what".split())
PRONOUN_HEADS = frozenset("one ones".split())
RELATIVE_PRONOUNS = frozenset("that which who whom whose where".split())
# A fronted clause ("next to the red building resides the white truck") opens with one of these.
FRONTING_WORDS = frozenset(
    """next to in on at behind beside near under below above over between across along
    against among beneath by close inside outside underneath atop adjacent from left right""".split()
)
# Verbs that introduce the subject after a fronted clause ("... stands the young girl").
INVERSION_VERBS = frozenset(
    "is are resides reside stands stand sits sit lies lie rests rest hangs hang appears appear sets".split()
)
# Words between an inversion verb and its subject ("is located the ...", "there is a ...").
INVERSION_FILLERS = frozenset("is are can be found located positioned placed situated seen there".split())
# "a pair of skis": the phrase continues through "of" after these quantity nouns.
QUANTITY_NOUNS = frozenset("pair group couple bunch set stack pile herd flock slice piece row cup glass bowl".split())
# "-ing" words after a noun are verbs ("zebras grazing") except these nouns.
ING_NOUNS = frozenset(
    """building ceiling painting clothing railing awning ring king wing thing something nothing
    string swing spring sling wedding icing frosting topping stuffing pudding dumpling
    lightning morning evening opening sibling earring stocking ping""".split()
)
TRAILING_JUNK = frozenset("and or but".split()) | DETERMINERS
IRREGULAR_PLURALS = {
    "people": "person", "children": "child", "feet": "foot", "teeth": "tooth",
    "mice": "mouse", "geese": "goose", "oxen": "ox", "persons": "person",
}

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


@dataclass(frozen=True)
class _Word:
    text: str  # lower-cased
    start: int
    end: int


def _words(text: str) -> list[_Word]:
    return [_Word(m.group().lower(), m.start(), m.end()) for m in _WORD.finditer(text)]


def singular_forms(word: str) -> set[str]:
    """Every form ``word`` could have in the singular (itself included), by simple rules.

    Two words are taken as the same noun when their form sets meet: "skis"/"ski",
    "boxes"/"box", "people"/"person", "women"/"woman", "knives"/"knife", "ladies"/"lady".
    """
    word = word.lower()
    forms = {word}
    if word in IRREGULAR_PLURALS:
        forms.add(IRREGULAR_PLURALS[word])
    if len(word) <= 3:
        return forms
    if word.endswith("men"):
        forms.add(word[:-3] + "man")
    if word.endswith("ies"):
        forms.add(word[:-3] + "y")
    if word.endswith("ves"):
        forms |= {word[:-3] + "f", word[:-3] + "fe"}
    if word.endswith("es"):
        forms.add(word[:-2])
    if word.endswith("s"):
        # Over-stripping ("glass" -> "glas") is harmless: only shared forms count.
        forms.add(word[:-1])
    return forms


def same_noun(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` are the same word up to case and number."""
    return a == b or bool(singular_forms(a) & singular_forms(b))


def _find_sequence(
    haystack: Sequence[_Word], needle: Sequence[str], equal: Callable[[str, str], bool]
) -> list[Span]:
    """Spans of every run of ``haystack`` words matching ``needle`` word by word."""
    n = len(needle)
    spans = []
    for i in range(len(haystack) - n + 1):
        if all(equal(haystack[i + j].text, needle[j]) for j in range(n)):
            spans.append((haystack[i].start, haystack[i + n - 1].end))
    return spans


def _content_words(words: Sequence[_Word]) -> list[str]:
    """The words of a phrase without its leading determiners ("the white truck" -> white truck)."""
    texts = [w.text for w in words]
    while len(texts) > 1 and texts[0] in DETERMINERS:
        texts.pop(0)
    return texts


def _noun_phrase_end(words: Sequence[_Word], first: int) -> int:
    """Index one past the last word of the noun phrase starting at ``words[first]``."""
    index = first
    seen_content = False
    while index < len(words):
        text = words[index].text
        if seen_content and (text in BOUNDARY_WORDS or _is_verb_ing(text) or _locative_tail(words, index)):
            if not (text == "of" and words[index - 1].text in QUANTITY_NOUNS):
                break
        seen_content = seen_content or text not in DETERMINERS or _pronoun_head(words, index, first)
        index += 1
    while index - 1 > first and words[index - 1].text in TRAILING_JUNK and not _pronoun_head(words, index - 1, first):
        index -= 1
    return index


def _pronoun_head(words: Sequence[_Word], index: int, first: int) -> bool:
    """"the one", "this one": ``one`` standing for the noun after a determiner, not a number."""
    return words[index].text in PRONOUN_HEADS and index > first and words[index - 1].text in DETERMINERS


def _locative_tail(words: Sequence[_Word], index: int) -> bool:
    """Whether ``words[index:]`` is a bare locative after the head ("... top right", "... far left")."""
    if words[index].text not in LOCATION_WORDS or words[index - 1].text in LOCATIVE_TAIL:
        return False
    return all(word.text in LOCATIVE_TAIL for word in words[index:])


def _is_verb_ing(word: str) -> bool:
    return len(word) > 4 and word.endswith("ing") and word not in ING_NOUNS


def _head_noun(phrase_words: Sequence[_Word]) -> str | None:
    """The last noun-like word of the phrase's subject part ("young lady in red" -> lady)."""
    if not phrase_words:
        return None
    subject = phrase_words[: _noun_phrase_end(phrase_words, 0)]
    for word in reversed(subject):
        if word.text not in DETERMINERS and word.text not in BOUNDARY_WORDS and word.text.isalpha():
            return word.text
    return None


def align_target(expression: str, phrase: str | None) -> Span | None:
    """Character span ``(start, end)`` of ``phrase`` in ``expression``, or ``None``.

    Tries, in order: an exact case-insensitive whole-word match; a word-by-word match
    ignoring leading articles/determiners, punctuation and whitespace; the same allowing
    plural/singular differences; then the phrase's head noun (its last noun-like word).
    When a step matches several places, the one overlapping the subject that
    ``heuristic_target`` finds wins (so "truck" in "next to the red truck resides the
    white truck" is the white one), else the first.
    """
    if not phrase or not expression:
        return None
    stripped = phrase.strip().strip(".,;:!?\"'()[]").strip()
    phrase_words = _words(stripped)
    if not phrase_words:  # punctuation only: names nothing
        return None
    needle = _content_words(phrase_words)
    expression_words = _words(expression)
    head = _head_noun(phrase_words)
    steps = (
        lambda: _exact_matches(expression, stripped),
        lambda: _find_sequence(expression_words, needle, str.__eq__),
        lambda: _find_sequence(expression_words, needle, same_noun),
        lambda: _find_sequence(expression_words, [head], same_noun) if head else [],
    )
    for matches in steps:
        spans = matches()
        if spans:
            return _prefer_subject(expression, spans)
    return None


def _exact_matches(expression: str, phrase: str) -> list[Span]:
    # Word boundaries, so "man" does not match inside "woman".
    pattern = re.escape(phrase)
    if _WORD.match(phrase[0]):
        pattern = r"(?<![^\W_])" + pattern
    if _WORD.match(phrase[-1]):
        pattern += r"(?![^\W_])"
    return [m.span() for m in re.finditer(pattern, expression, flags=re.IGNORECASE)]


def _prefer_subject(expression: str, spans: list[Span]) -> Span:
    if len(spans) == 1:
        return spans[0]
    _, (subject_start, subject_end) = heuristic_target(expression)
    overlapping = [s for s in spans if s[0] < subject_end and subject_start < s[1]]
    return (overlapping or spans)[0]


def heuristic_target(expression: str) -> tuple[str, Span]:
    """Model-free guess of the target: ``(phrase, (start, end))`` with ``phrase == expression[start:end]``.

    Takes the subject noun phrase: from the start up to the first relation word
    (preposition, relative pronoun or attaching verb: "to the left of", "next to",
    "that", "who", "with", "on", "wearing", ...). When the expression opens with a
    fronted clause ("next to the red, brick building and before the little tree resides
    the white truck."), the subject is the phrase after the inversion verb
    ("resides", "stands", "is", ...), else the phrase after the clause's first comma.
    Falls back to the whole expression when no phrase stands out.
    """
    if not expression or not expression.strip():
        raise UserInputError("cannot extract a target from an empty expression")
    words = _words(expression)
    if not words:
        stripped = expression.strip()
        start = expression.index(stripped)
        return stripped, (start, start + len(stripped))
    first = _subject_start(expression, words)
    end = _noun_phrase_end(words, first)
    span = (words[first].start, words[end - 1].end)
    return expression[span[0] : span[1]], span


def _subject_start(expression: str, words: Sequence[_Word]) -> int:
    """Index of the word where the subject noun phrase begins."""
    opening = _after_opening(words)
    if opening is not None:
        return opening
    if words[0].text not in FRONTING_WORDS:
        return 0
    comma = expression.find(",")
    after_comma = next((i for i, word in enumerate(words) if comma >= 0 and word.start > comma), None)
    if after_comma is not None and words[after_comma].text in DETERMINERS:
        # "under the umbrella, a man sits reading": a clause in subject-verb order after the comma.
        end = _noun_phrase_end(words, after_comma)
        if end == len(words) or words[end].text in INVERSION_VERBS:
            return after_comma
    for index, word in enumerate(words[1:-1], start=1):
        # "on the table that is by the window sits a cup": "that is" belongs to the clause.
        if word.text in INVERSION_VERBS and words[index - 1].text not in RELATIVE_PRONOUNS:
            after = index + 1
            while after < len(words) - 1 and words[after].text in INVERSION_FILLERS:
                after += 1
            return after
    return after_comma if after_comma is not None else 0


def _after_opening(words: Sequence[_Word]) -> int | None:
    """Where the subject starts after a presentative or interrogative opening, else ``None``.

    "there is a bus" / "this is a cat" / "it's a dog" -> after the copula; "which is the
    tallest giraffe" / "which one is ..." -> after the copula; "which bear is ..." -> "bear".
    """
    first = words[0].text
    if first in CONTRACTED_PRESENTATIVES and len(words) > 1:
        return 1
    if first in PRESENTATIVES and len(words) > 2 and words[1].text in COPULAS:
        return 2
    if first not in INTERROGATIVES or len(words) < 2:
        return None
    copula = 2 if words[1].text in PRONOUN_HEADS else 1
    if copula < len(words) - 1 and words[copula].text in COPULAS:
        return copula + 1
    return 1 if words[1].text not in COPULAS | PRONOUN_HEADS else None
