"""Running the agent over a benchmark: durable, resumable, shardable.

``agent-cli eval`` (``agent/cli/eval.py``) is the front end; this module holds the
pieces it is made of, each usable on its own:

- :class:`DatasetSpec` reads the samples of a run (optionally the first ``limit``);
- :func:`record_run` keeps the run's settings in ``run.json`` and refuses to resume a
  run with other settings, so two strategies never share a predictions file;
- :func:`run_samples` answers samples ``batch_size`` at a time together, each batch's
  predictions written durably (fsync per line), in order, before the next batch starts;
  :func:`completed_ids` tells a resumed run what to skip. A first Ctrl-C
  (:class:`GracefulInterrupt`) stops after the batch in flight;
- ``shards.py`` splits a run over processes (``Shard``) and merges their files (``merge_shards``);
- :func:`score_run` scores the predictions with the benchmark's metric.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, NamedTuple

from tools.batching import chunks, run_together
from tools.datasets import Sample
from tools.detections import Detections
from tools.errors import ExtractionFailedError, ModelOutputError, RexError, UserInputError
from tools.evaluation import Prediction, PredictionWriter, read_predictions
from tools.evaluation.common import EXTRACTION_FAILED, READ_AS_STORED
from tools.evaluation.formats import get_format, read_dataset
from tools.extraction.base import ExtractedTarget
from tools.extraction.reference import ReferenceExtractor, ReplyLog
from tools.files import EVAL_MARKER, exclusive_lock, read_settings_file, replaced_atomically, write_atomically
from tools.images import ImageInput, exif_orientation, frame_sizes, load_image

from ..configuration import Configuration
from ..result import Result

if TYPE_CHECKING:
    from ..agent import Agent

PREDICTIONS_FILE = "predictions.jsonl"
RUN_FILE = EVAL_MARKER
REPLIES_FILE = "extraction-replies.json"  # the reference extraction's reply to each batch
RUN_LOCK = ".run.lock"  # held shared by the shards of a run, exclusively by an unsharded one
RUN_FORMAT_VERSION = 1
# Settings that change where a run executes or what it may reuse, never its answers:
# a run may resume with other values.
RUNTIME_SETTINGS = ("device", "cache_dir")
# Failures that concern one sample (its image, its expression, a model's answer to it)
# are recorded as that sample's empty answer. Anything else (missing weights, a server
# outage) stops the run, which can be resumed once it is fixed.
SAMPLE_ERRORS = (UserInputError, ModelOutputError)
logger = logging.getLogger(__name__)
# Expressions whose targets are extracted together (model extractors batch 8 per prompt).
PREFETCH_CHUNK = 32
# Fields of an agent result that are worth keeping next to the boxes: expected_count to
# verification are what `agent-cli calibrate` re-chooses the boxes from at other thresholds;
# proposals what `agent-cli score --crs-letters raw` maps letters onto; decision_threshold
# what the written scores are aligned to.
KEPT_RESULT_FIELDS = ("level", "path", "target", "timings", "expected_count", "count_source", "count_probabilities",
                      "path_answer", "candidates", "selection", "verification", "proposals", "decision_threshold")


@dataclass(frozen=True)
class DatasetSpec:
    """Which samples a run answers: a benchmark file in ``format``, optionally its first ``limit`` samples."""

    format: str
    annotations: Path
    image_root: Path | None = None
    split: str | None = None
    limit: int | None = None

    def read(self) -> list[Sample]:
        samples = list(read_dataset(self.format, self.annotations, self.image_root, self.split))
        if get_format(self.format).metric.paired_negatives:  # found now, not after every sample has run
            positives = {str(sample.id) for sample in samples if not sample.is_negative}
            orphan = next((s for s in samples if s.is_negative and str(s.negative["positive_id"]) not in positives), None)
            if orphan is not None:
                raise UserInputError(f"{self.annotations}: negative sample {orphan.id!r} refers to positive_id "
                                     f"{orphan.negative['positive_id']!r}, which is not a positive sample of the file")
        samples = samples[: self.limit] if self.limit is not None else samples
        if not samples:
            raise UserInputError(f"{self.annotations}: no samples to evaluate")
        return samples

    def to_dict(self) -> dict[str, Any]:
        """What identifies the data (``limit`` does not: a longer run may continue a shorter one)."""
        return {
            "format": self.format,
            "annotations": str(Path(self.annotations).resolve()),
            "image_root": None if self.image_root is None else str(Path(self.image_root).resolve()),
            "split": self.split,
        }


def run_settings(dataset: DatasetSpec, config: Configuration) -> dict[str, Any]:
    """The settings that decide a run's answers, as ``run.json`` records them."""
    agent = _absolute_checkpoints({name: value for name, value in config.to_dict().items()
                                   if name not in RUNTIME_SETTINGS})
    return {"version": RUN_FORMAT_VERSION, "dataset": dataset.to_dict(), "agent": agent}


def _absolute_checkpoints(agent: dict[str, Any]) -> dict[str, Any]:
    """``agent`` settings with checkpoint folders as absolute paths: one folder named two ways
    (``./models/x``, ``/home/me/models/x``) is one checkpoint."""
    return {name: os.path.abspath(value) if name in ("detector", "mllm", "adapter", "llm") and isinstance(value, str)
            and os.path.exists(value) else value for name, value in agent.items()}


def record_run(output: Path, settings: dict[str, Any], force: bool = False) -> str | None:
    """Write ``output/run.json``; a run there with other settings is a ``UserInputError`` unless ``force``.

    Returns a description of the differences that ``force`` overrode (``None`` if none).
    """
    path = output / RUN_FILE
    differences = None
    if path.exists():
        previous = read_settings_file(path, "a run's settings; remove it or use another --output")
        differences = _differences(previous, settings) or None
        if differences is None:
            return None
        if not force:
            raise UserInputError(
                f"{output} holds a run with other settings ({differences}); use another --output, "
                "or --force to continue it with these settings"
            )
    write_atomically(path, json.dumps(settings, indent=2) + "\n")
    return differences


def _differences(before: dict[str, Any], now: dict[str, Any]) -> str:
    changes = []
    for section in ("dataset", "agent"):
        old, new = before.get(section) or {}, now[section]
        old = _absolute_checkpoints(old) if isinstance(old, dict) else {"(unreadable)": old}
        changes += [f"{name}: {old.get(name)!r} there, {new.get(name)!r} now"
                    for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)]
    return "; ".join(changes)


def check_image_size(sample: Sample, size: tuple[int, int]) -> None:
    """Refuse an image whose decoded size (EXIF orientation applied) is not the annotation's: its
    boxes would be scored in another frame (e.g. a photo rotated by its EXIF tag)."""
    if sample.image_size is not None and tuple(size) != tuple(sample.image_size):
        width, height = size
        raise UserInputError(
            f"{sample.image_path} decodes to {width}x{height} (EXIF orientation applied) but the annotation says "
            f"{sample.image_size[0]}x{sample.image_size[1]}"
        )


def sample_image(agent: Agent, sample: Sample) -> tuple[ImageInput, bool]:
    """What ``agent.locate`` is given for ``sample``'s image, decoded in the frame its annotation
    describes, and whether that is the stored one: when the image's EXIF tag turns it by 90
    degrees but the annotation has the stored width and height, every model reads it as stored.
    Otherwise it is oriented, and when the profile shows the MLLM the stored pixels (the
    reference's) the file itself goes to ``locate``, which decodes both (checked here from the
    file's header, not decoded twice)."""
    limit, path = agent.config.max_image_pixels, sample.image_path
    stored, oriented = frame_sizes(path)
    if stored != oriented and sample.image_size is not None and tuple(sample.image_size) == stored:
        return load_image(path, max_pixels=limit, orientation=False), True
    if not agent.config.profile_rules.mllm_exif_orientation and exif_orientation(path) != 1:
        check_image_size(sample, oriented)
        return path, False
    picture = load_image(path, max_pixels=limit)
    check_image_size(sample, picture.size)
    return picture, False


class Answered(NamedTuple):
    """The agent's ``Result`` for a sample, and whether its image was read as stored."""

    result: Any
    read_as_stored: bool = False


def lock_file(path: Path) -> Path:
    """The (hidden) lock file of predictions file ``path``: one process writes a predictions file at a time."""
    return path.with_name(f".{path.name}.lock")


def drop_errors(path: Path) -> int:
    """Remove the predictions recorded with an ``error`` from predictions file ``path`` (rewritten
    atomically), so a resumed run answers those samples again; returns how many were removed."""
    if not path.exists():
        return 0
    predictions = read_predictions(path)
    kept = [prediction for prediction in predictions if "error" not in prediction.fields]
    if len(kept) < len(predictions):
        with replaced_atomically(path) as temporary, PredictionWriter(temporary) as writer:
            for prediction in kept:
                writer.write(prediction)
    return len(predictions) - len(kept)


def completed_ids(path: Path) -> set[str]:
    """Ids (as text) already answered in predictions file ``path``; a torn last line does not count."""
    return {str(prediction.id) for prediction in read_predictions(path)} if path.exists() else set()


def answer(agent: Agent, sample: Sample, targets: Mapping[str, ExtractedTarget] | None = None) -> Answered:
    """The agent's ``Answered`` for ``sample`` (its image in the annotation's frame). ``targets``: the
    targets the reference extraction found for the dataset (``reference_targets``); a sample it
    dropped raises ``ExtractionFailedError`` and reaches no model."""
    given = None
    if targets is not None:
        given = targets.get(str(sample.id))
        if given is None or given.source == "failed":
            reply = None if given is None else given.answer
            raise ExtractionFailedError(f"the reference target extraction dropped this sample's batch (reply "
                                        f"{reply!r:.120})" if reply is not None else
                                        "the reference target extraction gave no target for this sample")
    image, read_as_stored = sample_image(agent, sample)
    return Answered(agent.locate(image, sample.expression, target=given), read_as_stored)


def predict(agent: Agent, sample: Sample, targets: Mapping[str, ExtractedTarget] | None = None) -> Prediction:
    """The agent's prediction for ``sample`` alone (``prediction`` says what a failure gives)."""
    try:
        outcome = answer(agent, sample, targets)
    except Exception as error:  # noqa: BLE001 - judged by prediction()
        outcome = error
    return prediction(sample, outcome)


def reference_targets(agent: Agent, samples: list[Sample], todo: list[Sample], output: Path
                      ) -> dict[str, ExtractedTarget] | None:
    """The targets of ``todo`` as the authors' ``SFA/target_extraction.py`` finds them for the whole
    dataset: its batches of 8 consecutive samples (in dataset order, keyed by sample id), so that
    each batch is the script's whatever a shard or a resumed run still has to do. ``None`` when
    the run extracts no targets that way (another profile, strategy or extractor).

    Replies are kept in ``output/extraction-replies.json``, which the shards of a run share: one
    at a time (a file lock) asks the batches no shard has asked yet, so each batch is asked once
    and every shard reads the same reply."""
    config = agent.config
    if not config.uses_extractor or config.profile_rules.extraction != "reference":
        return None
    extractor = agent.backends.extractor
    if not isinstance(extractor, ReferenceExtractor):
        return None
    items = [(str(sample.id), sample.expression) for sample in samples]
    replies = output / REPLIES_FILE
    with exclusive_lock(lock_file(replies), str(replies), wait=True):
        return extractor.extract_by_id(items, {str(sample.id) for sample in todo}, ReplyLog(replies, extractor.asker))


def prediction(sample: Sample, outcome) -> Prediction:
    """The prediction for ``sample`` from its ``Answered`` (or bare ``Result``), or from the exception
    its query raised.

    A failure of this sample gives an empty answer with an ``error`` field, so the run goes on:
    the documented sample errors (``SAMPLE_ERRORS``) and any unexpected one (logged too).
    Outages (a remote service down, a missing checkpoint, out of memory: ``RexError`` and
    ``MemoryError``) are raised again: they stop the run, which then resumes."""
    if isinstance(outcome, ExtractionFailedError):  # the method's outcome, not an error: the scripts drop it
        return Prediction(sample.id, Detections.empty(), {EXTRACTION_FAILED: True, "extraction_error": str(outcome)})
    if isinstance(outcome, SAMPLE_ERRORS):
        return Prediction(sample.id, Detections.empty(), {"error": f"{type(outcome).__name__}: {outcome}"})
    if isinstance(outcome, (RexError, MemoryError)):
        raise outcome
    if isinstance(outcome, BaseException):
        if not isinstance(outcome, Exception):  # KeyboardInterrupt and the like
            raise outcome
        logger.warning("sample %s failed: %s: %s", sample.id, type(outcome).__name__, outcome)
        return Prediction(sample.id, Detections.empty(), {"error": f"{type(outcome).__name__}: {outcome}"})
    answered = outcome if isinstance(outcome, Answered) else Answered(outcome)
    result = answered.result
    extra = {}
    selection = result.selection
    if not result.found and selection is not None and selection.none_probability is not None:
        # A CRS "None" still says how likely a target is: FineCops-Ref's AUROC reads it.
        extra["confidence"] = 1.0 - selection.none_probability
    if selection is not None and selection.answer_logprob is not None and math.isfinite(selection.answer_logprob):
        # What the authors' CRS scripts record, for `agent-cli score --confidence reference`.
        extra["answer_logprob"] = selection.answer_logprob
        if selection.none_logprob is not None and math.isfinite(selection.none_logprob):
            extra["none_logprob"] = selection.none_logprob
    if answered.read_as_stored:
        extra[READ_AS_STORED] = True
    return result_prediction(sample.id, result, **extra)


def result_prediction(sample_id: int | str, result: Result, **extra: Any) -> Prediction:
    """The prediction line of an agent ``Result``: its boxes, scores (decision-aligned), and the
    ``KEPT_RESULT_FIELDS`` it has, plus ``extra``."""
    data = result.to_dict()
    fields = {name: data[name] for name in KEPT_RESULT_FIELDS if data.get(name) not in (None, {}, [])}
    threshold = data.get("decision_threshold") or 0.0
    return Prediction.decided(sample_id, Detections(data["boxes"], data["scores"]), threshold, {**fields, **extra})


class GracefulInterrupt:
    """While active, a first Ctrl-C only sets :attr:`requested` (the loop stops after the batch in
    flight); a second one raises ``KeyboardInterrupt`` at once. Outside the main thread, where
    signal handlers cannot be set, Ctrl-C keeps its usual effect."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> "GracefulInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._request)
            self._installed = True
        return self

    def _request(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc_info: object) -> None:
        if self._installed:
            # None: the previous handler was not set from Python; the default is the best guess.
            signal.signal(signal.SIGINT, signal.SIG_DFL if self._previous is None else self._previous)


def run_samples(
    agent: Agent, samples: Iterable[Sample], writer: PredictionWriter, progress, stop: GracefulInterrupt,
    targets: Mapping[str, ExtractedTarget] | None = None,
) -> int:
    """Answer ``samples`` in order, ``batch_size`` at a time together (``tools.batching``), each
    batch's predictions written durably, in order, as soon as it is done; returns how many were
    written (fewer than given when ``stop`` was requested: it stops after the batch in flight).
    ``progress`` is a tqdm-like bar counting queries; ``targets`` as ``answer`` takes them."""
    batch = agent.config.batch_size
    written = 0
    for chunk in chunks(samples, max(PREFETCH_CHUNK, batch)):
        if stop.requested:
            return written
        if targets is None:
            agent.prefetch_targets([sample.expression for sample in chunk])
        for together in chunks(chunk, batch):
            if stop.requested:
                return written
            outcomes = run_together(lambda sample: answer(agent, sample, targets), together, batch)
            for sample, outcome in zip(together, outcomes):
                writer.write(prediction(sample, outcome))
                written += 1
                progress.update(1)
    return written


def scored_samples(dataset: DatasetSpec, samples: list[Sample]) -> tuple[list[Sample], int]:
    """The samples a run is scored on, and how many were left out.

    Only a ``limit`` leaves samples out: FineCops-Ref negatives whose positive lies beyond
    the limit cannot be paired with it and are not scored.
    """
    if not get_format(dataset.format).metric.paired_negatives or dataset.limit is None:
        return samples, 0
    positives = {str(sample.id) for sample in samples if not sample.is_negative}
    kept = [s for s in samples if not s.is_negative or str(s.negative["positive_id"]) in positives]
    return kept, len(samples) - len(kept)


def score_run(dataset: DatasetSpec, samples: list[Sample], predictions: list[Prediction]) -> tuple[dict[str, Any], int]:
    """The benchmark's numbers for ``predictions`` on ``samples`` (``scored_samples`` of them) and how
    many samples were left out."""
    kept, left_out = scored_samples(dataset, samples)
    return get_format(dataset.format).metric.score(kept, predictions), left_out
