"""Target extraction as the authors' ``SFA/target_extraction.py`` does it, quirk for quirk.

- **Messages**, in order: the few-shot conversation of ``prompts/reference_extraction.json``
  (system ``You are a helpful assistant.``; the instruction glued to three sample expressions;
  their sample answer, ``"this tree."`` with its full stop), then a user turn
  ``json.dumps(batch)`` (ASCII-escaped, default separators) of ``{id: expression}``, 8 per batch.
  The ids are the samples' (``agent-cli eval``), or "1".."n" when a call has none.
- **Reading**: the reply from its first ``{`` through ``ast.literal_eval``; a reply that does not
  evaluate drops the **whole batch**. What it evaluates to goes into one dict of answers with
  ``dict.update`` (so a list of pairs counts, ``1`` and ``True`` are one key, and a later reply
  may answer, or spoil, ids of an earlier batch); an id counts as answered when that dict, once
  every reply is in and saved and loaded as JSON as the script does, holds a string for it. Every id left without one is ``source="failed"``: its sample never reaches
  routing (``ExtractionFailedError``).
- **Focus span**: ``find_positive``, the first case-insensitive substring of the answer,
  ``end = start + len(answer)``; "the woman next to the man" with target "man" focuses inside
  "woman", as the authors' runs did. Not found (the script fails there): the whole caption.

The model asked is whatever ``complete(messages)`` calls: the paper used ``gpt-3.5-turbo``
through the OpenAI API (``ReferenceExtractor.served``), at the API's default temperature.
"""

from __future__ import annotations

import ast
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from prompts import load_messages

from ..batching import chunks
from ..defaults import EXTRACTION_PER_PROMPT
from ..errors import UserInputError
from ..files import write_atomically
from ..text import Span, neutralise_markup
from .base import ExtractedTarget
from .cache import ExtractionCache

logger = logging.getLogger(__name__)

MESSAGES = "reference_extraction"
Messages = list[dict[str, str]]


def reference_messages(batch: Mapping[str, str]) -> Messages:
    """The messages the script sends for ``batch`` (``{id: expression}``, in order), control markup
    in the expressions neutralised (``tools.text.neutralise_markup``)."""
    batch = {key: neutralise_markup(expression) for key, expression in batch.items()}
    return [*load_messages(MESSAGES), {"role": "user", "content": json.dumps(batch)}]


def read_reply(reply: str) -> dict[Any, Any] | None:
    """What the script's ``results.update`` adds for ``reply``, its keys as Python evaluated them;
    ``None`` when the reply does not evaluate (the batch is dropped)."""
    text = reply or ""
    start = text.find("{")
    if start != -1:
        text = text[start:]
    try:
        parsed = ast.literal_eval(text)
    except Exception:  # noqa: BLE001 - the script catches everything here
        return None
    added: dict[Any, Any] = {}
    try:
        added.update(parsed)
    except (TypeError, ValueError):  # the script logs it; what update inserted before failing stays
        pass
    return added


def as_saved(answers: dict[Any, Any]) -> dict[str, Any]:
    """``answers`` as the script's ``json.dump`` and the next script's ``json.load`` leave them: keys
    written as JSON writes them, the last of two keys written alike winning (a key JSON cannot
    write, on which the script would crash, is left out)."""
    saved: dict[str, Any] = {}
    for key, value in answers.items():
        written = _json_key(key)
        if written is not None:
            saved.pop(written, None)  # json.load keeps the last occurrence
            saved[written] = value
    return saved


def find_positive(expression: str, subject: str) -> Span | None:
    """The script's focus span of ``subject`` in ``expression``: the first case-insensitive
    substring, ``end = start + len(subject)``; ``None`` when it is not there."""
    start = expression.lower().find(subject.lower())
    return None if start == -1 else (start, start + len(subject))


def substring_target(expression: str, words: str, source: str = "model") -> tuple[ExtractedTarget, str | None]:
    """The target ``words`` focused where ``find_positive`` puts them, and a note when it does not
    find them: then the whole caption is the focus (the script would have failed)."""
    span = find_positive(expression, words)
    note = None
    if span is not None:
        # lower() can lengthen a text ("İ"): the script's span is kept, only cut to the expression.
        span = (min(span[0], len(expression)), min(span[1], len(expression)))
    if span is None:
        note = (f"the extracted target {words!r} is not a substring of the expression: focused on the whole "
                "caption (the authors' script fails here)")
    elif not expression[span[0]:span[1]].strip():
        note = f"the extracted target {words!r} covers only spaces of the expression: focused on the whole caption"
    if note is not None:
        span = (0, len(expression))
    return ExtractedTarget(expression[span[0]:span[1]], span, source, words), note


def failed_target(reply: str | None) -> ExtractedTarget:
    return ExtractedTarget(None, None, "failed", reply)


class ReplyLog:
    """The raw reply to each batch of a run, kept in a JSON file so a resumed run asks no batch
    twice (and anyone can read what the model said). Rewritten atomically after every batch.
    ``asker`` names the model and temperature asked (``ReferenceExtractor.asker``): replies another
    one gave are not reused."""

    def __init__(self, path: str | Path | None = None, asker: str = "") -> None:
        self.path = None if path is None else Path(path)
        self.asker = asker
        self._lock = threading.Lock()  # batches asked concurrently log their replies from threads
        self._entries: dict[str, dict[str, Any]] = {}
        if self.path is not None and self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                entries = data["batches"]
            except (ValueError, KeyError, TypeError):
                raise UserInputError(f"{self.path}: not a reference-extraction reply log; remove it") from None
            if data.get("asker", "") == asker:
                self._entries = entries

    def get(self, index: int, ids: Sequence[str]) -> str | None:
        entry = self._entries.get(str(index))
        return entry["reply"] if entry is not None and entry.get("ids") == list(ids) else None

    def put(self, index: int, ids: Sequence[str], reply: str) -> None:
        with self._lock:
            self._entries[str(index)] = {"ids": list(ids), "reply": reply}
            if self.path is not None:
                write_atomically(self.path, json.dumps({"version": 1, "asker": self.asker, "batches": self._entries},
                                                       ensure_ascii=False, indent=1) + "\n")


class ReferenceExtractor:
    """The authors' target extraction (module docstring) over ``complete(messages) -> reply``.

    ``extract_spans(expressions)`` serves ``Agent.locate``: batches of the expressions not yet
    cached, keyed "1".."n"; ``extract_by_id(items)`` serves ``agent-cli eval``: the dataset's
    ``(id, expression)`` pairs in order, 8 consecutive ones a batch, exactly the script's batches.
    ``concurrency`` batches are asked at once (a server answers them in parallel); their replies
    are read in batch order, as the script reads them.
    """

    def __init__(
        self,
        complete: Callable[[Messages], str],
        *,
        per_prompt: int = EXTRACTION_PER_PROMPT,
        concurrency: int = 1,
        cache: ExtractionCache | str | Path | None = None,
        name: str = "",
        asker: str | None = None,
    ) -> None:
        if per_prompt < 1 or concurrency < 1:
            raise UserInputError(f"per_prompt and concurrency must be at least 1, got {per_prompt}, {concurrency}")
        self.complete = complete
        self.per_prompt = per_prompt
        self.concurrency = concurrency
        self.cache = cache if isinstance(cache, ExtractionCache) else ExtractionCache(cache)
        self.name = name
        # What answers the messages (the model and its temperature; not where it is served from).
        self.asker = name if asker is None else asker

    @classmethod
    def served(cls, model: str, *, base_url: str | None = None, api_key: str | None = None,
               temperature: float | None = None, retry=None, **options) -> "ReferenceExtractor":
        """Asking an OpenAI-compatible chat model (``gpt-3.5-turbo`` in the paper); ``temperature``
        ``None`` sends none, as the script did; no ``max_tokens`` is sent either."""
        from ..openai_client import ChatCompletionsClient

        client = ChatCompletionsClient(base_url, api_key, retry=retry)
        sampling = {} if temperature is None else {"temperature": temperature}

        def complete(messages: Messages) -> str:
            response = client.create(model=model, messages=messages, **sampling)
            return response.choices[0].message.content or ""

        shown = "default" if temperature is None else temperature
        return cls(complete, name=f"openai:{model} at {client.base_url}",
                   asker=f"openai:{model} temperature={shown}", **options)

    @classmethod
    def local(cls, chat_model, *, max_new_tokens: int = 512, **options) -> "ReferenceExtractor":
        """Asking a local model with ``chat(messages, max_new_tokens, use_adapter=False)`` (``QwenVL``,
        ``InternVL``) greedily, its CRS adapter switched off."""

        def complete(messages: Messages) -> str:
            return chat_model.chat(messages, max_new_tokens=max_new_tokens, use_adapter=False)

        return cls(complete, name=getattr(chat_model, "name", type(chat_model).__name__), **options)

    def extract(self, expressions: Sequence[str]) -> list[str | None]:
        return [target.answer if target.source == "model" else None for target in self.extract_spans(expressions)]

    def extract_spans(self, expressions: Sequence[str]) -> list[ExtractedTarget]:
        """One target per expression: answered, or ``source="failed"``; only uncached ones are asked."""
        pending = [e for e in dict.fromkeys(expressions) if e not in self.cache and e and e.strip()]
        batches = list(chunks(pending, self.per_prompt))
        keyed = [[(str(i), expression) for i, expression in enumerate(batch, start=1)] for batch in batches]
        # Every batch is keyed "1".."n": each reply answers its own batch only. A failure is not
        # kept: a later call asks that expression again.
        failed: dict[str, ExtractedTarget] = {}
        for batch, targets in zip(keyed, self._answer(keyed, [None] * len(keyed), shared=False)):
            self.cache.update({expression: targets[key] for key, expression in batch
                               if targets[key].source != "failed"})
            failed.update({expression: targets[key] for key, expression in batch if targets[key].source == "failed"})
        return [self.cache.get(e) or failed.get(e) or failed_target(None) for e in expressions]

    def extract_by_id(self, items: Sequence[tuple[str, str]], needed: set[str] | None = None,
                      log: ReplyLog | None = None) -> dict[str, ExtractedTarget]:
        """The target of every id of the batches holding a ``needed`` id (default: all), from the
        dataset's ``(id, expression)`` pairs in order; replies already in ``log`` are not asked again."""
        log = log or ReplyLog()
        items = [(str(key), expression) for key, expression in items]
        batches = list(chunks(items, self.per_prompt))
        chosen = [(index, batch) for index, batch in enumerate(batches)
                  if needed is None or any(key in needed for key, _ in batch)]
        known = [log.get(index, [key for key, _ in batch]) for index, batch in chosen]
        targets: dict[str, ExtractedTarget] = {}
        for answered in self._answer([batch for _, batch in chosen], known, shared=True, log=log,
                                     indices=[index for index, _ in chosen]):
            targets.update(answered)
        return targets

    def _answer(self, batches: list[list[tuple[str, str]]], known: list[str | None], *, shared: bool,
                log: ReplyLog | None = None, indices: list[int] | None = None) -> list[dict[str, ExtractedTarget]]:
        """Each batch's targets. ``shared``: from the one dict of answers all the replies build up in
        batch order, as the script's ``results`` (a later reply may answer an earlier batch's ids);
        otherwise each from its own reply."""
        asked = [i for i, reply in enumerate(known) if reply is None]
        replies = list(known)
        errors: list[BaseException] = []

        def ask(i: int) -> None:
            try:
                replies[i] = self.complete(reference_messages(dict(batches[i])))
            except Exception as error:  # noqa: BLE001 - raised below once the others are kept
                errors.append(error)
                return
            if log is not None and indices is not None:
                log.put(indices[i], [key for key, _ in batches[i]], replies[i])

        if self.concurrency > 1 and len(asked) > 1:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(asked))) as pool:
                list(pool.map(ask, asked))
        else:
            for i in asked:
                ask(i)
        if errors:
            raise errors[0]
        read = []
        for batch, reply in zip(batches, replies):
            added = read_reply(reply)
            if added is None:
                logger.warning("target extraction reply dropped with its batch of %d: %r", len(batch), reply[:200])
            read.append(added or {})
        # As the script: one dict of every reply's Python keys (1, True and 1.0 are one key), in
        # batch order, then saved and loaded as JSON.
        everything: dict[Any, Any] = {}
        for added in read:
            everything.update(added)
        saved = as_saved(everything)
        return [{key: self._target(expression, (saved if shared else as_saved(added)).get(key), reply)
                 for key, expression in batch} for batch, reply, added in zip(batches, replies, read)]

    @staticmethod
    def _target(expression: str, answer: Any, reply: str) -> ExtractedTarget:
        if not isinstance(answer, str) or not answer.strip():
            return failed_target(reply)
        return substring_target(expression, answer)[0]

    def __repr__(self) -> str:
        return f"ReferenceExtractor({self.name!r}, cache={self.cache!r})"


def _json_key(key: Any) -> str | None:
    """``key`` as ``json.dump`` writes a dict key; ``None`` for a key it cannot write."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key)
    return None
