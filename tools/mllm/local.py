"""The machinery every local MLLM shares: grounding, CRS selection and text chat with transformers.

(Over 400 lines on purpose: it is the one base class of the local families, and its calls share
the batching, caching and scoring helpers that only make sense together.)

``LocalVLM`` implements the ``MLLM`` protocol for a transformers image-text-to-text model;
a subclass (``QwenVL``, ``InternVL``) only says how its processor wants an image and a
question (``_conversation``, ``_encode``) and what size the model sees an image at.

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
  and the reference's log-probabilities (``Selection``). With ``reading="generated"`` (the
  reference profile) it generates greedily instead and chooses what the text names
  (``reading.py``), the same probabilities read from the first step. ``verify`` asks "is this box what
  the expression describes?" of every candidate, ``p(yes)`` from the first answer token: the
  image and the question's shared lines run once per query, then one row per candidate
  continues from their KV cache (``shared_prefix.py``). Both live in ``candidates.py``.
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
import json
import os
import threading
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image

from ..batching import one_call_at_a_time
from ..checkpoints import resolve_checkpoint, unloadable_checkpoint
from ..defaults import BATCH_SIZE
from ..detections import Detections
from ..devices import resolve_device, resolve_dtype
from ..errors import ModelOutputError, RexError, UserInputError
from ..images import ImageInput, load_image
from ..batching import chunks
from .checks import check_lengths, checked_text
from .candidates import CandidateQuestions
from .decoding import chosen_scores, forget_rope_deltas, stop_token_ids, token_texts
from .families import ModelFamily, box_token_confidence, family_for_model

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


class LocalVLM(CandidateQuestions):
    """A transformers MLLM run locally; see the module docstring. Subclasses say how to encode.

    Build one with ``from_pretrained(...)``; the constructor takes an already loaded model and
    processor (useful in tests and when sharing weights).
    """

    kind = "MLLM"  # what error messages call a checkpoint of this class
    thread_safe = True  # one call at a time on the model (its ``_lock``): callers need no lock of their own

    def __init__(
        self,
        model,
        processor,
        *,
        family: ModelFamily | None = None,
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
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.prompts_dir = prompts_dir
        self._stop_ids = stop_token_ids(model.generation_config, self.tokenizer)
        self._letter_ids: dict[tuple[str, ...], list[list[int]]] = {}
        self._yes_no_ids: list[list[int]] | None = None
        self._count_ids: list[list[int]] | None = None
        self._prefix_caches: OrderedDict[tuple, object] = OrderedDict()
        # A call switches the adapter off and keeps position offsets and prefix caches on the
        # model: calls from several threads (a batch of queries) take turns.
        self._lock = threading.RLock()
        # transformers 5 calls the KV cache argument (and output) "cache", 4.x "past_key_values".
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a PEFT wrapper
        self._cache_argument = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        self._refuse_thinking_template()

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        adapter: str | None = None,
        attn_implementation: str | None = None,
        revision: str | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        batch_size: int = BATCH_SIZE,
        prompts_dir: str | None = None,
        **options,
    ):
        """Load a checkpoint (Hub id or folder), optionally with a PEFT LoRA ``adapter``.

        ``dtype="auto"`` is bf16/fp16 on GPU and fp32 on CPU; ``options`` are the subclass's own
        (``QwenVL``: ``min_pixels``, ``max_pixels``; ``InternVL``: ``max_patches``).
        """
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = resolve_checkpoint(name_or_path, revision=revision, hint="or pass --mllm PATH")
        # A resolved local folder is already the requested revision.
        hub = {} if os.path.isdir(path) else {"revision": revision}
        family = cls._family_of(read_config(name_or_path, path, hub))  # fail before loading any weights
        torch_device = resolve_device(device)
        with unloadable_checkpoint(name_or_path, cls.kind):
            processor = AutoProcessor.from_pretrained(path, **hub)
        load = {"dtype": resolve_dtype(dtype, torch_device), **hub}
        if attn_implementation:
            load["attn_implementation"] = attn_implementation
        cls._check_dtype(family, load["dtype"])
        with unloadable_checkpoint(name_or_path, cls.kind):
            model = AutoModelForImageTextToText.from_pretrained(path, **load)
        if adapter is not None:
            model = _load_adapter(model, adapter)
        with explain_out_of_memory(name_or_path, torch_device):
            model.to(torch_device)
        return cls(model, processor, family=family, max_new_tokens=max_new_tokens, batch_size=batch_size,
                   prompts_dir=prompts_dir, name=str(name_or_path), **options)

    @classmethod
    def _family_of(cls, config) -> ModelFamily:
        return family_for_model(config.model_type)

    @classmethod
    def _check_dtype(cls, family: ModelFamily, dtype: torch.dtype) -> None:
        """Warn about a dtype this family is known to fail in."""

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
        check_lengths(images=images, expressions=expressions, focuses=focuses)
        pictures = [load_image(image) for image in images]
        prompts = [
            self.family.grounding_prompt(checked_text(expression, "expression"), focus, self.prompts_dir)
            for expression, focus in zip(expressions, focuses)
        ]
        outputs: list[GroundingOutput | None] = [None] * len(prompts)
        for chunk in chunks(self._by_length(pictures, prompts, range(len(prompts))), self.batch_size):
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

    def _by_length(self, pictures, prompts: Sequence[str], indices) -> list[int]:
        """``indices`` ordered by how long their inputs are (image tokens, then prompt length), so
        that the rows of one forward pass need little padding when a call holds several passes."""
        def length(i: int) -> tuple[int, int]:
            width, height = self.input_size(pictures[i].size)
            return width * height, len(prompts[i])

        return sorted(indices, key=length)

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
            self._prefix_caches[key] = getattr(output, self._cache_argument)
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

    # ---------------------------------------------------------------- what a subclass provides

    def input_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """``(w, h)`` the model sees an image of ``image_size`` at."""
        raise NotImplementedError

    def _conversation(self, image: Image.Image, text: str) -> list[dict]:
        """One user turn: the image, then the text."""
        raise NotImplementedError

    def _encode(self, conversations: list[list[dict]]):
        """Chat template + vision preprocessing; returns model inputs and each image's input ``(w, h)``."""
        raise NotImplementedError

    def _memory_hint(self) -> str:
        """What lowers this model's memory use, for the out-of-memory message."""
        return ""

    # ---------------------------------------------------------------- shared by the subclasses

    def _prompt_text(self, conversation: list[dict]) -> str:
        """The conversation through the chat template, ending where the model's answer starts."""
        return self.processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)

    # ---------------------------------------------------------------- internals

    def _generate(self, inputs, max_new_tokens: int, cache=None) -> list[_Generated]:
        """Greedy generation, continuing ``cache`` (a KV cache of the inputs' first tokens) if given;
        per row the new tokens up to the first stop token and their scores."""
        output, new_tokens = self._generate_greedily(inputs, max_new_tokens, cache)
        # Scores: after the logits processors (what greedy decoding ranked, and what the
        # reference's compute_transition_scores reads); logits: the model's own.
        logits, logprobs = chosen_scores(output.scores, new_tokens)
        raw_logits, raw_logprobs = chosen_scores(output.logits, new_tokens)
        results = []
        for row, token_ids in enumerate(new_tokens.tolist()):
            n = self._answer_length(token_ids)
            results.append(_Generated(token_ids[:n], logprobs[row, :n], logits[row, :n], raw_logprobs[row, :n],
                                      raw_logits[row, :n]))
        return results

    def _generate_greedily(self, inputs, max_new_tokens: int, cache=None):
        """``generate``'s output (scores and logits of every step) and each row's new tokens."""
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
        return output, output.sequences[:, inputs["input_ids"].shape[1] :]

    def _answer_length(self, token_ids: Sequence[int]) -> int:
        """How many of the new ``token_ids`` come before the first stop token."""
        return next((i for i, token in enumerate(token_ids) if token in self._stop_ids), len(token_ids))

    @contextmanager
    def _inference(self) -> Iterator[None]:
        with explain_out_of_memory(self.name, self.device, self._memory_hint()), torch.inference_mode():
            yield

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, family={self.family.title}, device={self.device})"


def read_config(name_or_path, path: str, hub: dict):
    """The checkpoint's transformers config, or one line saying why it cannot be read."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, **hub)
    except (ValueError, KeyError) as error:  # e.g. a model type this transformers does not know
        if _raw_model_type(path) in REMOTE_CODE_TYPES:
            raise UserInputError(
                f"{name_or_path!r} is an original {REMOTE_CODE_TYPES[_raw_model_type(path)]} checkpoint (remote "
                "code): use its -hf conversion (e.g. OpenGVLab/InternVL3-8B-hf), or serve it with vLLM "
                "(`vllm serve MODEL --trust-remote-code`) and pass --mllm openai:MODEL"
            ) from None
        raise UserInputError(f"cannot read the model config of {name_or_path!r}: {error}") from None


# Model types of checkpoints that only load with their own remote code, which REX does not run.
REMOTE_CODE_TYPES = {"internvl_chat": "InternVL"}


def _raw_model_type(path: str) -> str | None:
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as file:
            return json.load(file).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


@contextmanager
def explain_out_of_memory(name, device, hint: str = "") -> Iterator[None]:
    """Turn a CUDA out-of-memory error into one actionable line."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as error:
        torch.cuda.empty_cache()
        lower = f"{hint}, " if hint else ""
        raise RexError(
            f"{name} ran out of GPU memory on {device}: {lower}use dtype fp16/bf16, a smaller batch size, or device cpu"
        ) from error


def _load_adapter(model, adapter: str):
    """The model with a PEFT LoRA adapter, kept unmerged so target extraction can switch it off
    (``disable_adapter``); the LoRA products cost little next to the base weights."""
    from peft import PeftModel

    adapter_path = resolve_checkpoint(adapter, hint="or pass --adapter PATH")
    return PeftModel.from_pretrained(model, adapter_path)
