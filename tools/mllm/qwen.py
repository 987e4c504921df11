"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL run locally with transformers.

``QwenVL`` implements the ``MLLM`` protocol:

- ``ground`` generates greedily and parses the answer with the family's convention
  (``families.py``), boxes in the order written. Each box is scored by the mean
  probability of its coordinate tokens under the scores generation decided by, i.e.
  after the logits processors the checkpoint's ``generation_config`` switches on (a
  repetition penalty for Qwen2-VL-7B-Instruct), as the reference's
  ``compute_transition_scores`` does; ``Detections.data`` also carries ``prob_product``
  and ``mean_logit`` (the reference's other two measures) and ``raw_mean_prob``,
  ``raw_prob_product``, ``raw_mean_logit`` from the raw logits. An answer without a
  usable box gives empty ``Detections``.
- ``generate_grounding`` is the lower-level call behind it: one ``GroundingOutput`` per
  query with the prompt, the raw answer text, the detections and, when the answer was
  unusable, why. Nothing is stashed on the model between calls.
- ``select`` answers the CRS question with ONE forward pass (no KV cache) and no
  ``generate``: the option probabilities are the next-token probabilities of the option
  letters under the raw logits; the selection also records the letters' total probability
  and the reference's log-probabilities (``Selection``).
- ``chat`` / ``generate_text`` serve the same loaded weights as a text-only LLM (target
  extraction), with a LoRA adapter switched off: it was tuned for CRS, not for that task.
  A ``fixed_prefix`` that many prompts share (the extraction prompt's few-shot part) is run
  once per model: later calls continue from a copy of its KV cache and pay for their own
  tokens only, with the same answers.

Batched calls pad on the left, so the last position of every row is its next token.
"""

from __future__ import annotations

import copy
import inspect
import threading
import os
import warnings
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image

from ..batching import one_call_at_a_time
from ..checkpoints import resolve_checkpoint, unloadable_checkpoint
from ..defaults import BATCH_SIZE, DEFAULT_MLLM
from ..detections import Detections
from ..devices import resolve_device, resolve_dtype
from ..errors import ModelOutputError, RexError, UserInputError
from ..images import ImageInput, load_image
from .crs import bare_letter_logprobs, crs_prompt, letter_distribution, letter_mass, letter_token_ids
from .decoding import chosen_scores, first_step_scores, forget_rope_deltas, stop_token_ids, token_texts
from .families import QWEN2_VL, QwenFamily, box_token_confidence, family_for_model
from .selection import Selection

DEFAULT_MAX_NEW_TOKENS = 128
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# Fixed prompt prefixes whose KV caches a model keeps (one per prompt template in practice).
MAX_PREFIX_CACHES = 4


@dataclass(frozen=True, eq=False)
class GroundingOutput:
    """Everything one grounding query produced, for debugging and logging."""

    prompt: str
    text: str  # the answer as generated, special tokens kept
    detections: Detections  # empty when the answer had no usable box
    error: str | None  # why the answer was unusable (a ModelOutputError message), else None
    input_size: tuple[int, int]  # (w, h) of the resized image the model saw


class _Generated(NamedTuple):
    token_ids: list[int]  # up to, not including, the first stop token
    logprobs: np.ndarray  # log-probability of each chosen token under the processed scores
    logits: np.ndarray  # processed score of each chosen token (what generation ranked by)
    raw_logprobs: np.ndarray  # the same two under the model's raw logits
    raw_logits: np.ndarray


class QwenVL:
    """A Qwen VL checkpoint loaded with transformers; see the module docstring.

    Build it with ``QwenVL.from_pretrained(...)``; the constructor takes an already
    loaded model and processor (useful in tests and when sharing weights).
    """

    def __init__(
        self,
        model,
        processor,
        *,
        family: QwenFamily | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        batch_size: int = BATCH_SIZE,
        prompts_dir: str | None = None,
        name: str | None = None,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.family = family or family_for_model(model.config.model_type)
        self.name = name or self.family.title
        image_processor = processor.image_processor
        self.patch_size = int(getattr(image_processor, "patch_size", None) or self.family.patch_size)
        default_min, default_max = pixel_budget(image_processor)
        self.min_pixels = int(min_pixels or default_min or 0)
        self.max_pixels = int(max_pixels or default_max or 0)
        if not 0 < self.min_pixels <= self.max_pixels:
            raise UserInputError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels} and {self.max_pixels}")
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.prompts_dir = prompts_dir
        self._stop_ids = stop_token_ids(model.generation_config, self.tokenizer)
        self._letter_ids: dict[tuple[str, ...], list[list[int]]] = {}
        self._prefix_caches: OrderedDict[tuple, object] = OrderedDict()
        # A call switches the adapter off and keeps M-RoPE offsets and prefix caches on the
        # model: calls from several threads (a batch of queries) take turns.
        self._lock = threading.RLock()
        # transformers 5 calls the KV cache argument "cache", 4.x "past_key_values".
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a PEFT wrapper
        self._cache_argument = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        self._refuse_thinking_template()

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = DEFAULT_MLLM,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        adapter: str | None = None,
        attn_implementation: str | None = None,
        revision: str | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        batch_size: int = BATCH_SIZE,
        prompts_dir: str | None = None,
    ) -> "QwenVL":
        """Load a Qwen VL checkpoint (Hub id or folder), optionally with a PEFT LoRA ``adapter``.

        ``min_pixels`` / ``max_pixels`` bound the resized image (default: the checkpoint's
        processor settings); ``dtype="auto"`` is bf16/fp16 on GPU and fp32 on CPU.
        """
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        path = resolve_checkpoint(name_or_path, revision=revision, hint="or pass --mllm PATH")
        # A resolved local folder is already the requested revision.
        hub = {} if os.path.isdir(path) else {"revision": revision}
        try:
            config = AutoConfig.from_pretrained(path, **hub)
        except (ValueError, KeyError) as error:  # e.g. a model type this transformers does not know
            raise UserInputError(f"cannot read the model config of {name_or_path!r}: {error}") from None
        family = family_for_model(config.model_type)  # fail before loading any weights
        torch_device = resolve_device(device)
        with unloadable_checkpoint(name_or_path, "Qwen VL"):
            processor = AutoProcessor.from_pretrained(path, **hub)
        load = {"dtype": resolve_dtype(dtype, torch_device), **hub}
        if attn_implementation:
            load["attn_implementation"] = attn_implementation
        if family is QWEN2_VL and load["dtype"] == torch.float16:
            warnings.warn(
                "Qwen2-VL in float16 is known to overflow and write garbage; use bf16 (or fp32)", stacklevel=2
            )
        with unloadable_checkpoint(name_or_path, "Qwen VL"):
            model = AutoModelForImageTextToText.from_pretrained(path, **load)
        if adapter is not None:
            model = _load_adapter(model, adapter)
        with _explain_out_of_memory(name_or_path, torch_device, max_pixels):
            model.to(torch_device)
        return cls(model, processor, family=family, min_pixels=min_pixels, max_pixels=max_pixels,
                   max_new_tokens=max_new_tokens, batch_size=batch_size, prompts_dir=prompts_dir,
                   name=str(name_or_path))

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ---------------------------------------------------------------- grounding

    def ground(self, image: ImageInput, expression: str, focus: str | None = None) -> Detections:
        """Boxes the model writes for ``expression`` (``focus``: target-focus prompt), in answer order."""
        return self.generate_grounding([image], [expression], [focus])[0].detections

    def ground_batch(
        self, images: Sequence[ImageInput], expressions: Sequence[str], focuses: Sequence[str | None] | None = None
    ) -> list[Detections]:
        """``ground`` for several queries, ``batch_size`` at a time."""
        return [output.detections for output in self.generate_grounding(images, expressions, focuses)]

    @one_call_at_a_time
    def generate_grounding(
        self,
        images: Sequence[ImageInput],
        expressions: Sequence[str],
        focuses: Sequence[str | None] | None = None,
        *,
        max_new_tokens: int | None = None,
    ) -> list[GroundingOutput]:
        """Prompt, raw answer, detections and parse error of each grounding query."""
        focuses = [None] * len(expressions) if focuses is None else list(focuses)
        _check_lengths(images=images, expressions=expressions, focuses=focuses)
        pictures = [load_image(image) for image in images]
        prompts = [
            self.family.grounding_prompt(_checked_text(expression, "expression"), focus, self.prompts_dir)
            for expression, focus in zip(expressions, focuses)
        ]
        outputs: list[GroundingOutput | None] = [None] * len(prompts)
        for chunk in _chunks(self._by_length(pictures, prompts, range(len(prompts))), self.batch_size):
            inputs, input_sizes = self._encode([self._conversation(pictures[i], prompts[i]) for i in chunk])
            generated = self._generate(inputs, max_new_tokens or self.max_new_tokens)
            for i, input_size, answer in zip(chunk, input_sizes, generated):
                outputs[i] = self._read_grounding(prompts[i], pictures[i].size, input_size, answer, expressions[i])
        return outputs

    def _read_grounding(self, prompt, image_size, input_size, answer: _Generated, expression) -> GroundingOutput:
        pieces = token_texts(self.tokenizer, answer.token_ids)
        # Parsed on the concatenated token texts so box spans line up with the tokens.
        text = "".join(pieces)
        try:
            parsed = self.family.parse_answer(text, image_size, input_size)
        except ModelOutputError as error:
            return GroundingOutput(prompt, text, Detections.empty(), str(error), input_size)
        confidence = box_token_confidence(pieces, answer.logprobs, answer.logits, parsed.spans)
        raw = box_token_confidence(pieces, answer.raw_logprobs, answer.raw_logits, parsed.spans)
        detections = parsed.to_detections(confidence, default_label=expression, raw=raw)
        return GroundingOutput(prompt, text, detections, None, input_size)

    # ---------------------------------------------------------------- CRS selection

    def select(
        self, image: ImageInput, expression: str, candidates: Detections, allow_none: bool = False
    ) -> Selection:
        """Probabilities over the lettered ``candidates`` (and "None", last, when ``allow_none``)."""
        return self.select_batch([image], [expression], [candidates], allow_none)[0]

    @one_call_at_a_time
    def select_batch(
        self,
        images: Sequence[ImageInput],
        expressions: Sequence[str],
        candidates: Sequence[Detections],
        allow_none: bool = False,
    ) -> list[Selection]:
        """``select`` for several queries: one forward pass per batch, never ``generate``."""
        _check_lengths(images=images, expressions=expressions, candidates=candidates)
        pictures = [load_image(image) for image in images]
        questions = [
            crs_prompt(_checked_text(text, "expression"), boxes, picture.size, allow_none, family=self.family,
                       input_size=self.input_size(picture.size), prompts_dir=self.prompts_dir)
            for picture, text, boxes in zip(pictures, expressions, candidates)
        ]
        selections: list[Selection | None] = [None] * len(questions)
        asked = []
        for i, (_, letters) in enumerate(questions):
            if len(letters) > 1:
                asked.append(i)
            else:  # zero options, or "None" alone: nothing to ask the model
                selections[i] = Selection(candidates[i], letters, np.ones(len(letters)), allow_none)
        prompts = [question for question, _ in questions]
        for chunk in _chunks(self._by_length(pictures, prompts, asked), self.batch_size):
            inputs, _ = self._encode([self._conversation(pictures[i], questions[i][0]) for i in chunk])
            with self._inference():  # left padding: column -1 is every row's next token
                # One step: a KV cache would only be built to be thrown away.
                next_token_logits = self.model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1].float()
                processed = first_step_scores(self.model.generation_config, inputs["input_ids"], next_token_logits)
            for row, i in enumerate(chunk):
                letters = questions[i][1]
                ids = self._letter_token_ids(letters)
                selections[i] = Selection(
                    candidates[i], letters, letter_distribution(next_token_logits[row], ids), allow_none,
                    option_mass=letter_mass(next_token_logits[row], ids),
                    letter_logprobs=bare_letter_logprobs(processed[row], ids),
                )
        return selections

    def _by_length(self, pictures, prompts: Sequence[str], indices) -> list[int]:
        """``indices`` ordered by how long their inputs are (image tokens, then prompt length), so
        that the rows of one forward pass need little padding when a call holds several passes."""
        def length(i: int) -> tuple[int, int]:
            width, height = self.input_size(pictures[i].size)
            return width * height, len(prompts[i])

        return sorted(indices, key=length)

    def input_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """``(w, h)`` the model sees an image of ``image_size`` at, within this model's pixel budget."""
        return self.family.input_size(image_size, self.min_pixels, self.max_pixels, self.patch_size)

    def _letter_token_ids(self, letters: Sequence[str]) -> list[list[int]]:
        key = tuple(letters)
        if key not in self._letter_ids:
            self._letter_ids[key] = letter_token_ids(self.tokenizer, key)
        return self._letter_ids[key]

    # ---------------------------------------------------------------- text

    @one_call_at_a_time
    def chat(
        self,
        messages: str | Sequence[dict],
        max_new_tokens: int = 256,
        *,
        use_adapter: bool = True,
        fixed_prefix: str | None = None,
    ) -> str:
        """Greedy reply to a user message (a string) or a list of chat messages; ``use_adapter=False``
        answers with the base model's weights when a LoRA adapter is loaded.

        ``fixed_prefix``: text the user message starts with and many calls share. Its KV cache
        is computed on first use and kept (per model and adapter state); each call continues
        from a copy of it, so the answer is the uncached one at the cost of the call's own
        tokens. A prefix the message does not start with token for token is simply not used.
        """
        conversation = [{"role": "user", "content": messages}] if isinstance(messages, str) else list(messages)
        inputs, _ = self._encode([conversation])
        with nullcontext() if use_adapter else self._adapter_off():
            cache = self._prefix_cache(conversation, inputs["input_ids"], fixed_prefix, use_adapter)
            answer = self._generate(inputs, max_new_tokens, cache=cache)[0]
        return self.tokenizer.decode(answer.token_ids, skip_special_tokens=True).strip()

    def generate_text(self, prompt: str, max_new_tokens: int = 256, *, fixed_prefix: str | None = None) -> str:
        """Text-only completion of ``prompt`` as a user turn (the local LLM for target extraction),
        by the base model: a CRS adapter was not trained to answer that question. ``fixed_prefix``
        as for ``chat``."""
        return self.chat(prompt, max_new_tokens=max_new_tokens, use_adapter=False, fixed_prefix=fixed_prefix)

    def _prefix_cache(self, conversation, input_ids: torch.Tensor, fixed_prefix: str | None, use_adapter: bool):
        """A private copy of the KV cache of the tokens before ``fixed_prefix`` ends, or ``None``."""
        if not fixed_prefix or input_ids.shape[0] != 1:
            return None
        text = self.processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        where = text.find(fixed_prefix)
        if where < 0:
            return None
        # The prefix's last token may merge with what follows it: cache the tokens before it.
        prefix_ids = self.tokenizer(text[: where + len(fixed_prefix)], add_special_tokens=False)["input_ids"][:-1]
        if not prefix_ids or input_ids[0, : len(prefix_ids)].tolist() != prefix_ids:
            return None
        key = (tuple(prefix_ids), use_adapter)
        if key not in self._prefix_caches:
            with self._inference():
                output = self.model(input_ids=torch.tensor([prefix_ids], device=self.device), use_cache=True)
            self._prefix_caches[key] = output.past_key_values
            while len(self._prefix_caches) > MAX_PREFIX_CACHES:
                self._prefix_caches.popitem(last=False)
        self._prefix_caches.move_to_end(key)
        return copy.deepcopy(self._prefix_caches[key])  # generation grows it in place

    @property
    def has_adapter(self) -> bool:
        return hasattr(self.model, "disable_adapter")

    def _adapter_off(self):
        return self.model.disable_adapter() if self.has_adapter else nullcontext()

    def _refuse_thinking_template(self) -> None:
        """Thinking checkpoints (Qwen3-VL-*-Thinking) open ``<think>`` in the generation prompt:
        CRS would read the option letters at the first thinking token, and grounding answers
        would start with reasoning. Refuse them in one line."""
        try:
            rendered = self.processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "text", "text": "?"}]}],
                tokenize=False,
                add_generation_prompt=True,
            )
        except (ValueError, TypeError, KeyError):  # no usable template: the first real call says so
            return
        tail = rendered[rendered.rfind("?") :]
        if THINK_OPEN in tail and THINK_CLOSE not in tail[tail.rfind(THINK_OPEN) :]:
            raise UserInputError(
                f"{self.name} opens a {THINK_OPEN} block in its generation prompt (a Thinking checkpoint): CRS reads "
                "the answer letter from the first generated token; use the Instruct checkpoint of the same model"
            )

    # ---------------------------------------------------------------- internals

    def _conversation(self, image: Image.Image, text: str) -> list[dict]:
        """One user turn: the image (resized within our pixel budget by qwen_vl_utils), then the text."""
        image_item = {"type": "image", "image": image, "min_pixels": self.min_pixels, "max_pixels": self.max_pixels}
        return [{"role": "user", "content": [image_item, {"type": "text", "text": text}]}]

    def _encode(self, conversations: list[list[dict]]):
        """Chat template + vision preprocessing; returns model inputs and each image's resized ``(w, h)``."""
        from qwen_vl_utils import process_vision_info

        texts = [
            self.processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
            for conversation in conversations
        ]
        images, _ = process_vision_info(conversations, image_patch_size=self.patch_size)
        if images is None:
            return self.processor(text=texts, padding=True, return_tensors="pt").to(self.device), []
        # qwen_vl_utils already resized within our pixel budget; resizing again would apply
        # the processor's own budget instead and move the coordinates of Qwen2.5-VL answers.
        inputs = self.processor(text=texts, images=images, padding=True, return_tensors="pt", do_resize=False)
        return inputs.to(self.device), [image.size for image in images]

    def _generate(self, inputs, max_new_tokens: int, cache=None) -> list[_Generated]:
        """Greedy generation, continuing ``cache`` (a KV cache of the inputs' first tokens) if given;
        per row the new tokens up to the first stop token and their scores."""
        continued = {}
        if cache is not None:  # a text-only chat: ids and mask are all the model reads
            inputs = {name: inputs[name] for name in ("input_ids", "attention_mask")}
            continued[self._cache_argument] = cache
            forget_rope_deltas(self.model)
        with self._inference():
            output = self.model.generate(
                **inputs,
                **continued,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                return_dict_in_generate=True,
                output_logits=True,
                output_scores=True,
            )
            new_tokens = output.sequences[:, inputs["input_ids"].shape[1] :]
            # Scores: after the logits processors (what greedy decoding ranked, and what the
            # reference's compute_transition_scores reads); logits: the model's own.
            logits, logprobs = chosen_scores(output.scores, new_tokens)
            raw_logits, raw_logprobs = chosen_scores(output.logits, new_tokens)
        results = []
        for row, token_ids in enumerate(new_tokens.tolist()):
            n = next((i for i, token in enumerate(token_ids) if token in self._stop_ids), len(token_ids))
            results.append(_Generated(token_ids[:n], logprobs[row, :n], logits[row, :n], raw_logprobs[row, :n],
                                      raw_logits[row, :n]))
        return results

    @contextmanager
    def _inference(self) -> Iterator[None]:
        with _explain_out_of_memory(self.name, self.device, self.max_pixels), torch.inference_mode():
            yield

    def __repr__(self) -> str:
        return f"QwenVL({self.name!r}, family={self.family.title}, device={self.device}, max_pixels={self.max_pixels})"


@contextmanager
def _explain_out_of_memory(name, device, max_pixels) -> Iterator[None]:
    """Turn a CUDA out-of-memory error into one actionable line."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as error:
        torch.cuda.empty_cache()
        budget = f" (now {max_pixels})" if max_pixels else ""
        raise RexError(
            f"{name} ran out of GPU memory on {device}: lower max_pixels{budget}, use dtype fp16/bf16, "
            f"a smaller batch size, or device cpu"
        ) from error


def _load_adapter(model, adapter: str):
    """The model with a PEFT LoRA adapter, kept unmerged so target extraction can switch it off
    (``disable_adapter``); the LoRA products cost little next to the base weights."""
    from peft import PeftModel

    adapter_path = resolve_checkpoint(adapter, hint="or pass --adapter PATH")
    return PeftModel.from_pretrained(model, adapter_path)


def pixel_budget(image_processor) -> tuple[int | None, int | None]:
    """The processor's (min_pixels, max_pixels): transformers 5 keeps them in ``size``."""
    size = getattr(image_processor, "size", None) or {}
    read = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    low = read("shortest_edge") or getattr(image_processor, "min_pixels", None)
    high = read("longest_edge") or getattr(image_processor, "max_pixels", None)
    return low, high


def _checked_text(text: str, what: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise UserInputError(f"the {what} is empty")
    return text


def _check_lengths(**sequences: Sequence) -> None:
    lengths = {name: len(values) for name, values in sequences.items()}
    if len(set(lengths.values())) > 1:
        raise UserInputError("batch inputs differ in length: " + ", ".join(f"{k}={v}" for k, v in lengths.items()))


def _chunks(indices: Sequence[int], size: int) -> Iterator[list[int]]:
    indices, size = list(indices), max(1, size)
    for start in range(0, len(indices), size):
        yield indices[start : start + size]
