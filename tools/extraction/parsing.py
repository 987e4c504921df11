"""The batched target-extraction question and the parsing of whatever the LLM answers.

The question carries up to ``per_prompt`` expressions as a JSON dict keyed "1".."n"
(the reference batches 8); the answer is expected as a dict with the same keys, whose values
are the phrases (REX's prompt) or ``{"target": ..., "count": ...}`` objects (the count
prompt, ``target_extraction_count``).
LLMs wrap, quote and trim such dicts in many ways, so ``parse_targets`` accepts code
fences, prose around the dict, python-literal dicts (single quotes, ``None``),
trailing commas, list values and even a truncated dict, and gives ``None`` for every
item it cannot read instead of failing the whole batch.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any, Sequence

from prompts import render_prompt

from .count import ExpectedCount, parse_count

PROMPT_NAME = "target_extraction"
COUNT_PROMPT_NAME = "target_extraction_count"  # also asks how many objects each expression names

_FENCE = re.compile(r"```[A-Za-z0-9_-]*\s*(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
# One `key: value` pair, for replies too broken to parse as a whole (truncated, unbalanced).
_PAIR = re.compile(
    r"""["']?(?P<key>\d+)["']?\s*:\s*(?P<value>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|\[[^\]]*\]|\{[^{}]*\}|null|None)"""
)


def extraction_prompt(expressions: Sequence[str], prompts_dir: str | Path | None = None, *,
                      with_count: bool = False) -> str:
    """The target-extraction question for ``expressions``, keyed "1".."n" in order; ``with_count``
    asks for each one's object count too."""
    batch = {str(i): expression for i, expression in enumerate(expressions, start=1)}
    keys = ", ".join(f'"{key}"' for key in batch)
    return render_prompt(
        _prompt_name(with_count), prompts_dir, expressions=json.dumps(batch, ensure_ascii=False), keys=keys
    )


def extraction_prompt_prefix(prompts_dir: str | Path | None = None, *, with_count: bool = False) -> str:
    """The part every extraction prompt starts with (instructions and in-context examples):
    the template rendered up to the first field that varies."""
    marker = "\x00"
    return render_prompt(_prompt_name(with_count), prompts_dir, expressions=marker, keys=marker).split(marker)[0]


def _prompt_name(with_count: bool) -> str:
    return COUNT_PROMPT_NAME if with_count else PROMPT_NAME


def parse_targets(reply: str, count: int) -> list[str | None]:
    """The phrases answered for keys "1".."count"; ``None`` where the reply has no usable one."""
    return [phrase for phrase, _ in parse_answers(reply, count)]


def parse_answers(reply: str, count: int) -> list[tuple[str | None, ExpectedCount | None]]:
    """``(phrase, object count)`` answered for keys "1".."count"; ``None`` for what the reply lacks."""
    parsed = _parse_container(reply or "")
    if isinstance(parsed, list):
        parsed = {str(i): value for i, value in enumerate(parsed, start=1)}
    if not isinstance(parsed, dict):
        parsed = _parse_pairs(reply or "")
    by_key = {str(key).strip(): value for key, value in parsed.items()}
    answers = []
    for i in range(1, count + 1):
        value = by_key.get(str(i))
        if isinstance(value, dict):
            answers.append((_as_phrase(value.get("target")), parse_count(value.get("count"))))
        else:
            answers.append((_as_phrase(value), None))
    return answers


def _parse_container(reply: str) -> Any:
    """The dict (or list) in the reply, trying JSON first, then python literals."""
    fenced = _FENCE.search(reply)
    text = fenced.group(1) if fenced else reply
    # A list answer counts only when there is no dict: lists also occur as dict values.
    opener, closer = ("{", "}") if "{" in text else ("[", "]")
    start, end = text.find(opener), text.rfind(closer)
    if start < 0 or end <= start:
        return None
    candidate = text[start : end + 1]
    for attempt in (candidate, _TRAILING_COMMA.sub(r"\1", candidate)):
        for loads in (json.loads, ast.literal_eval):
            try:
                return loads(attempt)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
    return None


def _parse_pairs(reply: str) -> dict[str, Any]:
    pairs: dict[str, Any] = {}
    for match in _PAIR.finditer(reply):
        value = match.group("value")
        try:
            pairs.setdefault(match.group("key"), ast.literal_eval(value))
        except (ValueError, SyntaxError):
            pairs.setdefault(match.group("key"), None)
    return pairs


def _as_phrase(value: Any) -> str | None:
    """A non-empty phrase from a reply value: strings as they are, lists by their first phrase."""
    if isinstance(value, (list, tuple)):
        return next((phrase for phrase in map(_as_phrase, value) if phrase), None)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None
