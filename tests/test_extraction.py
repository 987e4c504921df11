"""Target extraction: reply parsing, span alignment, the heuristic, batching, fallback and cache."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fake_openai_server import FakeChatServer, completion, error
from tools.errors import RemoteServiceError, UserInputError
from tools.extraction import (
    ExtractedTarget,
    ExtractionCache,
    HeuristicExtractor,
    LocalChatExtractor,
    OpenAIChatExtractor,
    TargetExtractor,
    align_target,
    extraction_prompt,
    heuristic_target,
    parse_targets,
)

TRUCK = "next to the red, brick building and before the little tree resides the white truck."
GIRL = (
    "to the left of the young, happy, and smiling boy stands the young girl who, in turn, "
    "is positioned to the left of the white dishwasher."
)
TREE = "this tree can be found on the left side of the white building."

MESSY_REPLIES = [
    ('{"1": "the dog", "2": "a cat", "3": "the car"}', ["the dog", "a cat", "the car"]),
    ('```json\n{"1": "the dog", "2": "a cat", "3": "the car"}\n```', ["the dog", "a cat", "the car"]),
    ("```\n{'1': 'the dog', '2': 'a cat', '3': 'the car'}\n```", ["the dog", "a cat", "the car"]),
    ("Sure! Here are the targets:\n{'1': 'the dog', '2': \"a cat\", '3': None}\nHope this helps.", ["the dog", "a cat", None]),
    ('{"1": "the dog", "2": "a cat", "3": "the car",}', ["the dog", "a cat", "the car"]),
    ('{\n  "1": "the dog",\n  "3": "the car",\n}', ["the dog", None, "the car"]),
    ('{"1": ["the dog", "the leash"], "2": [], "3": null}', ["the dog", None, None]),
    ("{'1': 'the dog', '2': null, '3': ['the car']}", ["the dog", None, "the car"]),
    ('{1: "the dog", 2: "a cat", 3: "the car"}', ["the dog", "a cat", "the car"]),
    ('{"1": "  the dog  ", "2": "", "3": "the car"}', ["the dog", None, "the car"]),
    ('Answer: {"1": "the dog", "2": "a c', ["the dog", None, None]),
    ('["the dog", "a cat", "the car"]', ["the dog", "a cat", "the car"]),
    ("I don't know.", [None, None, None]),
    ("", [None, None, None]),
]


@pytest.mark.parametrize(("reply", "expected"), MESSY_REPLIES)
def test_parse_targets_reads_messy_replies(reply, expected):
    assert parse_targets(reply, 3) == expected


# (expression, phrase from a model, expected text of the aligned span or None)
ALIGNMENTS = [
    # exact, case-insensitive
    ("the man on the left", "the man", "the man"),
    ("The Man on the left", "the man", "The Man"),
    ("a dog sitting on the couch", "A DOG", "a dog"),
    (TRUCK, "the white truck", "the white truck"),
    (GIRL, "the young girl", "the young girl"),
    ("the woman next to the man", "man", "man"),
    ("a blue car parked behind the bus", "blue car", "blue car"),
    # articles and determiners the model added, dropped or changed
    ("white truck near the tree", "the white truck", "white truck"),
    ("the white truck near the tree", "a white truck", "white truck"),
    ("two zebras grazing", "the zebras", "zebras"),
    ("those skis on the rack", "these skis", "skis"),
    ("this tree can be found on the left side", "this tree.", "this tree"),
    ("his bike leaning on the wall", "the bike", "bike"),
    # punctuation and whitespace
    ("the red,brick building", "red, brick building", "red,brick building"),
    ("the red, brick building", "red brick building", "red, brick building"),
    ("a man in a t-shirt", "t shirt", "t-shirt"),
    ("the   tall   giraffe", "tall giraffe", "tall   giraffe"),
    ("the tall giraffe", '"tall giraffe"', "tall giraffe"),
    ("the hot-dog on the plate", "hot dog", "hot-dog"),
    ("the girl's umbrella", "girl's umbrella", "girl's umbrella"),
    # plural and singular
    ("the skis on the left", "ski", "skis"),
    ("a pair of skis", "the pair of ski", "pair of skis"),
    ("two boxes stacked up", "the box", "boxes"),
    ("the box on the shelf", "boxes", "box"),
    ("people near the bus", "person", "people"),
    ("the person with a hat", "people", "person"),
    ("the women by the door", "woman", "women"),
    ("the ladies on the bench", "the lady", "ladies"),
    ("knives on the table", "knife", "knives"),
    ("the children playing", "child", "children"),
    ("the glasses on the table", "glass", "glasses"),
    ("the dishes in the sink", "dish", "dishes"),
    ("the policemen on horses", "policeman", "policemen"),
    # paraphrase: fall back to the head noun
    ("the big brown dog lying on the grass", "the large dog", "dog"),
    ("a young lady in a red dress", "the smiling lady in red", "lady"),
    ("next to the red truck resides the white truck", "the pale truck", "truck"),
    ("the car behind the bus", "the small car that is parked", "car"),
    ("the elephants drinking water", "the grey elephant", "elephants"),
    ("a horse pulling the cart", "brown horse", "horse"),
    ("the guy holding a racket", "tennis guy", "guy"),
    # absent
    ("the dog", "cat", None),
    ("the car behind the bus", "the automobile", None),
    ("a young lady in a red dress", "the girl in red", None),
    ("the woman", "man", None),
    ("the man", "", None),
    ("the man", None, None),
    ("the man", "...", None),
]


@pytest.mark.parametrize(("expression", "phrase", "expected"), ALIGNMENTS)
def test_align_target(expression, phrase, expected):
    span = align_target(expression, phrase)
    assert (None if span is None else expression[span[0] : span[1]]) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        (TRUCK, "the white truck"),
        (GIRL, "the young girl"),
        (TREE, "this tree"),
        ("the man wearing a red hat", "the man"),
        ("The big brown dog that is sleeping", "The big brown dog"),
        ("a pair of skis leaning on the wall", "a pair of skis"),
        ("woman in blue", "woman"),
        ("two zebras grazing", "two zebras"),
        ("the white building on the right", "the white building"),
        ("people sitting on the bench", "people"),
        ("on the left, a man riding a bike", "a man"),
        ("on the table that is by the window sits a cup", "a cup"),
        ("left of the car is a dog", "a dog"),
        ("behind the fence there is a small horse", "a small horse"),
        ("umbrella", "umbrella"),
    ],
)
def test_heuristic_target(expression, expected):
    phrase, (start, end) = heuristic_target(expression)
    assert phrase == expected == expression[start:end]


def test_heuristic_target_rejects_blank_expressions():
    with pytest.raises(UserInputError):
        heuristic_target("   ")


def test_prompt_carries_the_reference_examples_and_the_keyed_batch():
    prompt = extraction_prompt(["the dog", 'the "big" cat'])
    assert TRUCK in prompt and '"the young girl"' in prompt and '"this tree."' in prompt
    assert '{"1": "the dog", "2": "the \\"big\\" cat"}' in prompt


def asked_batch(text: str) -> dict[str, str]:
    """The expressions dict of an extraction prompt (its last "Expressions:" line)."""
    line = [line for line in text.splitlines() if line.startswith("Expressions:")][-1]
    return json.loads(line.removeprefix("Expressions:"))


def answering_server(answer) -> FakeChatServer:
    """Answers every batch with ``{key: answer(expression)}``."""

    def respond(body, attempt):
        batch = asked_batch(body["messages"][0]["content"])
        return completion(json.dumps({key: answer(expression) for key, expression in batch.items()}))

    return FakeChatServer(respond)


def last_word(expression: str) -> str:
    return expression.split()[-1]


EXPRESSIONS = [f"the dog number {i}" for i in range(19)]


def test_openai_extractor_batches_eight_keyed_one_to_eight():
    with answering_server(last_word) as server:
        extractor = OpenAIChatExtractor("gpt-3.5-turbo", base_url=server.base_url, api_key="k")
        targets = extractor.extract(EXPRESSIONS)
    # The prompts are asked concurrently, so they may arrive in any order.
    batches = sorted((asked_batch(text) for text in server.user_texts()),
                     key=lambda batch: EXPRESSIONS.index(next(iter(batch.values()))))
    assert [list(batch) for batch in batches] == [[str(k) for k in range(1, 9)]] * 2 + [["1", "2", "3"]]
    assert [e for batch in batches for e in batch.values()] == EXPRESSIONS
    assert targets == [str(i) for i in range(19)]
    assert server.requests[0]["model"] == "gpt-3.5-turbo" and server.requests[0]["temperature"] == 0
    assert isinstance(extractor, TargetExtractor)


def test_unusable_answers_fall_back_to_the_heuristic_per_item():
    replies = '```json\n{"1": "the white truck", "2": "a purple elephant", "3": null}\n```'
    with FakeChatServer(lambda body, attempt: completion(replies)) as server:
        extractor = OpenAIChatExtractor("m", base_url=server.base_url, api_key="k")
        truck, elephant, tree = extractor.extract_spans([TRUCK, GIRL, TREE])
    assert truck == ExtractedTarget("the white truck", (67, 82), "model", "the white truck")
    assert (elephant.phrase, elephant.source, elephant.answer) == ("the young girl", "heuristic", "a purple elephant")
    assert (tree.phrase, tree.source, tree.answer) == ("this tree", "heuristic", None)


def test_duplicates_and_blank_expressions_are_not_sent():
    with answering_server(last_word) as server:
        extractor = OpenAIChatExtractor("m", base_url=server.base_url, api_key="k")
        targets = extractor.extract(["the red car", "", "the red car", "  "])
    assert [asked_batch(text) for text in server.user_texts()] == [{"1": "the red car"}]
    assert targets == ["car", None, "car", None]


def test_second_call_is_answered_from_the_cache():
    with answering_server(last_word) as server:
        extractor = OpenAIChatExtractor("m", base_url=server.base_url, api_key="k")
        first = extractor.extract_spans(EXPRESSIONS[:5])
        second = extractor.extract_spans(EXPRESSIONS[:5])
        extractor.extract(EXPRESSIONS[:6])
    assert first == second
    assert [len(asked_batch(text)) for text in server.user_texts()] == [5, 1]


def test_json_cache_file_round_trips(tmp_path):
    path = tmp_path / "targets.json"
    with answering_server(last_word) as server:
        first = OpenAIChatExtractor("m", base_url=server.base_url, api_key="k", cache=path).extract_spans(
            [TRUCK, "the dog number 3"]
        )
        again = OpenAIChatExtractor("m", base_url=server.base_url, api_key="k", cache=path).extract_spans(
            [TRUCK, "the dog number 3"]
        )
    assert len(server.requests) == 1, "the second extractor must read everything from the file"
    assert again == first and [t.source for t in first] == ["model", "model"] and first[0].span == (77, 82)
    assert json.loads(path.read_text())["entries"]["the dog number 3"]["span"] == [15, 16]
    assert [p.name for p in tmp_path.iterdir()] == ["targets.json"], "no temporary files left behind"
    assert len(ExtractionCache(path)) == 2


def test_a_corrupt_cache_file_is_a_user_error(tmp_path):
    path = tmp_path / "targets.json"
    path.write_text("{not json")
    with pytest.raises(UserInputError, match="not a target-extraction cache"):
        ExtractionCache(path)


def test_server_failure_is_raised_not_papered_over():
    with FakeChatServer(lambda body, attempt: error(404, "model not found")) as server:
        extractor = OpenAIChatExtractor("nope", base_url=server.base_url, api_key="k")
        with pytest.raises(RemoteServiceError, match="check the model name"):
            extractor.extract(["the dog"])


class EchoGenerator:
    """A local "model" answering with the last word of every expression it is asked about."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def generate_text(self, prompt: str, max_new_tokens: int = 64) -> str:
        self.calls.append((prompt, max_new_tokens))
        batch = asked_batch(prompt)
        return "Here you go: " + repr({key: last_word(expression) for key, expression in batch.items()})


def test_local_extractor_uses_any_text_generator():
    generator = EchoGenerator()
    extractor = LocalChatExtractor(generator, max_new_tokens=300, per_prompt=4)
    spans = extractor.extract_spans(EXPRESSIONS[:6])
    assert [len(asked_batch(prompt)) for prompt, _ in generator.calls] == [4, 2]
    assert generator.calls[0][1] == 300
    assert all(target.source == "model" for target in spans)
    assert re.fullmatch(r"\d+", spans[5].phrase)


def test_heuristic_extractor_needs_no_model():
    extractor = HeuristicExtractor()
    assert extractor.extract([TRUCK, GIRL, TREE, ""]) == ["the white truck", "the young girl", "this tree", None]
    assert isinstance(extractor, TargetExtractor)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200), st.integers(min_value=1, max_value=8))
def test_parse_targets_never_fails(reply, count):
    targets = parse_targets(reply, count)
    assert len(targets) == count and all(t is None or (isinstance(t, str) and t.strip()) for t in targets)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80), st.text(max_size=30))
def test_align_target_gives_a_valid_span_or_none(expression, phrase):
    span = align_target(expression, phrase)
    assert span is None or 0 <= span[0] < span[1] <= len(expression)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80).filter(str.strip))
def test_heuristic_target_is_always_a_piece_of_the_expression(expression):
    phrase, (start, end) = heuristic_target(expression)
    assert phrase and phrase == expression[start:end]


def test_cache_files_shared_by_two_writers_keep_both_writers_entries(tmp_path):
    from tools.extraction import ExtractedTarget, ExtractionCache

    path = tmp_path / "shared.json"
    first, second = ExtractionCache(path), ExtractionCache(path)
    first.update({"the dog": ExtractedTarget("the dog", (0, 7), "model")})
    second.update({"a cat": ExtractedTarget("a cat", (0, 5), "model")})
    reloaded = ExtractionCache(path)
    assert "the dog" in reloaded and "a cat" in reloaded


class CountingGenerator:
    """Answers the count prompt with {"target": last word, "count": ...} objects."""

    def __init__(self, counts):
        self.counts = counts
        self.prompts = []

    def generate_text(self, prompt: str, max_new_tokens: int = 64) -> str:
        self.prompts.append(prompt)
        batch = asked_batch(prompt)
        return json.dumps({key: {"target": last_word(expression), "count": self.counts.get(expression)}
                           for key, expression in batch.items()})


def test_the_count_prompt_gives_each_targets_count_in_the_same_call():
    expressions = ["the two dogs", "all the cars", "the cat", "the birds"]
    generator = CountingGenerator({"the two dogs": 2, "all the cars": "many", "the cat": 1, "the birds": "lots?"})
    targets = LocalChatExtractor(generator, with_count=True).extract_spans(expressions)
    assert len(generator.prompts) == 1 and '"count"' in generator.prompts[0]
    assert [t.phrase for t in targets] == ["dogs", "cars", "cat", "birds"]
    assert [t.count for t in targets] == [2, "many", 1, None]  # an unreadable count is left to the words
    assert ExtractedTarget.from_dict(targets[1].to_dict()) == targets[1]
    # The reference prompt (the default) is the authors' and asks for no count.
    plain = CountingGenerator({})
    LocalChatExtractor(plain).extract_spans(expressions)
    assert '"count"' not in plain.prompts[0]


def test_parse_answers_reads_objects_plain_phrases_and_truncated_replies():
    from tools.extraction import parse_answers

    assert parse_answers('{"1": {"target": "the dog", "count": 2}, "2": "the cat"}', 2) == [("the dog", 2),
                                                                                            ("the cat", None)]
    assert parse_answers('{"1": {"target": "a", "count": "many"}, "2": {"target": "b", "cou', 2) == [("a", "many"),
                                                                                               (None, None)]
