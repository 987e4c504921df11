"""The model-free reading of how many objects an expression names, and the LLM's count parsed."""

from __future__ import annotations

import pytest

from tools.extraction.count import MANY, parse_count, read_count

CASES = [
    # one object
    ("the man in the red shirt", 1),
    ("the bus on the left", 1),
    ("a glass of water", 1),
    ("the glass near the plate", 1),
    ("the woman holding an umbrella", 1),
    ("left one", 1),
    ("the giraffe eating leaves", 1),
    ("man with glasses", 1),
    ("the red and white bus", 1),
    ("the black and white cat", 1),
    ("a person wearing jeans", 1),
    ("the pair of scissors on the desk", 1),
    ("the dress", 1),
    ("one of the dogs", 1),
    ("the kid next to the bikes", 1),
    ("the tennis racket", 1),
    ("zebra in the back", 1),
    ("the sheep on the right", 1),
    ("this cactus", 1),
    ("the boss", 1),
    # numerals and number words
    ("two dogs on the left", 2),
    ("the two kids near the car", 2),
    ("three zebras", 3),
    ("2 cups", 2),
    ("the 4 chairs around the table", 4),
    ("five people standing", 5),
    ("a pair of shoes", 2),
    ("a couple of birds", 2),
    ("twelve eggs", 12),
    ("both cups", 2),
    ("both of the men", 2),
    # many
    ("all the people in the back", MANY),
    ("every chair", MANY),
    ("each bottle on the shelf", MANY),
    ("several cars parked", MANY),
    ("the women", MANY),
    ("people walking", MANY),
    ("glasses on the table", 1),  # spectacles: one object
    ("the sheep and the cows", MANY),
    ("bananas", MANY),
    ("the children playing", MANY),
    ("the oranges in the bowl", MANY),
    ("multiple umbrellas", MANY),
    # coordinations
    ("the man and the dog", 2),
    ("cats and dogs", MANY),
    ("man and woman sitting", 2),
    ("the boy, the girl and the dog", 3),
    ("the cup & the plate", 2),
]


@pytest.mark.parametrize(("expression", "expected"), CASES)
def test_read_count(expression, expected):
    assert read_count(expression) == expected


def test_the_table_is_large_enough_and_varied():
    assert len(CASES) >= 40
    assert {type(expected) for _, expected in CASES} == {int, str}


def test_counting_words_before_the_extracted_target_count():
    # An extractor may give "dogs" alone; "two" right before it still counts.
    assert read_count("two dogs on the left", (4, 8)) == 2
    assert read_count("left of two cars stands the man", (23, 30)) == 1  # "two" is not next to the target
    assert read_count("", None) == 1


@pytest.mark.parametrize(("value", "expected"), [
    ("1", 1), (1, 1), (2.0, 2), ("3", 3), ("two", 2), ("many", MANY), ("several", MANY), ("Multiple", MANY),
    ("0", None), (0, None), ("none", None), (None, None), (True, None), ("a few", None), (-2, None), (1.5, None),
])
def test_parse_count(value, expected):
    assert parse_count(value) == expected
