"""Building CRS instruction samples from a REC dataset and the specialist's candidates (paper §III-D).

For each expression the specialist's candidates are its top-10 boxes on the full expression,
computed with a detector or read from a candidates file: JSON Lines ``{"id", "boxes",
"scores"}``, the predictions-file format (:func:`tools.evaluation.read_predictions`), ``id``
being the dataset's sample id. The options are then built by the function CRS builds them
with at inference (``tools.routing.crs_candidates``, under the same ``profile``), and shuffled.

Decisions (each drop is counted under its reason, see ``DROP_REASONS``):

- Positives: kept when the option with the highest IoU to the ground truth exceeds
  ``min_iou`` (0.5, the paper's filter); that option is the answer. Several ground-truth
  boxes (gRefCOCO) are skipped as ``multi-target``: CRS answers one letter, and with several
  right letters any single answer would teach an arbitrary choice.
- Negatives (FineCops-Ref negatives, gRefCOCO no-target expressions) answer the "None" letter.
- Expressions are cleaned as ``locate`` cleans them (``tools.text.clean_expression``); one
  that is blank or longer than ``MAX_EXPRESSION_CHARS`` is ``unusable-expression``.
- The "None" option goes on *every* sample, positives included, whenever negatives are
  included (``allow_none=None``, the default): were it offered to negatives only, its mere
  presence would give the answer away. This is the paper's "None" variant (10,000 positives,
  2,500 negatives); ``allow_none=True`` also offers it without negatives.
- Options are shuffled with a generator seeded from (``seed``, sample id), and samples are
  visited in an order drawn from the same two, so a sample's options, and which samples
  fill the ``positives`` / ``negatives`` quotas, depend neither on the file's order nor on
  what else is in it. Samples left once a quota is full are ``sampled-out``.

The output folder holds ``samples.jsonl`` (our format, :mod:`finetune.samples`),
``<dataset_name>.json`` with ``dataset_info.json`` (LLaMA-Factory), ``report.json`` (counts
per outcome), ``build.json`` (the settings) and, with a detector, ``candidates.jsonl`` (its
top-10 boxes per sample, usable as ``--candidates`` to rebuild with other settings without
the detector). Kept samples and detector candidates are appended and fsynced one by one, so
an interrupted build reruns with the same settings and continues where it stopped, with
the same final files as an uninterrupted one. The settings and their checks are in
``build_settings.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tools import boxes as box_ops
from tools.datasets import Sample
from tools.evaluation.formats import read_dataset
from tools.detections import Detections
from tools.detectors import Detector
from tools.files import JsonLinesAppender, read_json_lines, write_atomically
from tools.errors import ImageLoadError, UserInputError
from tools.evaluation import Prediction, PredictionWriter, read_predictions
# The predictions writer's torn-last-line repair serves the samples file just as well.
from tools.images import load_image
from tools.mllm.crs import option_letters
from tools.detectors.base import resize_option
from tools.profiles import get_profile
from tools.routing import BoxFilter, crs_candidates
from tools.text import clean_expression

from .build_settings import (DETECTOR_CANDIDATES_FILE, DETECTOR_TOP_K, REPORT_FILE, SAMPLES_FILE, BuildConfig,
                             check_config, claim_output_dir)
from .samples import CRSSample, export_llama_factory, read_samples
from .verify_samples import VerifySample

POSITIVE, NEGATIVE = "positive", "negative"

MULTI_TARGET = "multi-target"
UNREADABLE_IMAGE = "unreadable-image"
UNUSABLE_EXPRESSION = "unusable-expression"  # blank, or over tools.text.MAX_EXPRESSION_CHARS
MISSING_CANDIDATES = "missing-candidates"  # the candidates file has no line for the sample
NO_CANDIDATES = "no-candidates"
NO_CANDIDATE_OVER_IOU = "no-candidate-over-iou"
SINGLE_OPTION = "single-option"  # inference answers a lone option without asking: nothing to learn
SAMPLED_OUT = "sampled-out"  # its quota was full when its turn came
DROP_REASONS = (MULTI_TARGET, UNREADABLE_IMAGE, UNUSABLE_EXPRESSION, MISSING_CANDIDATES, NO_CANDIDATES,
                NO_CANDIDATE_OVER_IOU, SINGLE_OPTION, SAMPLED_OUT)


@dataclass
class BuildReport:
    """How many samples were read, kept and dropped per reason; ``read == kept + sum(dropped)``."""

    read: int = 0
    kept_positives: int = 0
    kept_negatives: int = 0
    dropped: Counter = field(default_factory=Counter)
    output_dir: str = ""

    @property
    def kept(self) -> int:
        return self.kept_positives + self.kept_negatives

    def to_dict(self) -> dict[str, Any]:
        return {"read": self.read, "kept": self.kept, "kept_positives": self.kept_positives,
                "kept_negatives": self.kept_negatives,
                "dropped": {reason: self.dropped[reason] for reason in DROP_REASONS if self.dropped[reason]}}


class SampleDropped(Exception):
    """A sample yields no CRS question; ``reason`` is one of ``DROP_REASONS``."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def build_crs_data(config: BuildConfig, *, detector: Detector | None = None, progress: bool = True) -> BuildReport:
    """Build (or resume building) the CRS samples ``config`` describes; returns the counts.

    ``detector`` replaces loading ``config.detector`` (any :class:`~tools.detectors.Detector`).
    The LLaMA-Factory export is written only when some sample was kept.
    """
    from tqdm.auto import tqdm

    check_config(config)
    output = Path(config.output_dir)
    claim_output_dir(output, config)
    samples = list(read_dataset(config.dataset_format, config.annotations, config.image_root, config.split))
    report = BuildReport(read=len(samples), output_dir=str(output))
    walk = _visiting_order(samples, config.seed, report, drop_multi_target=config.task == "choice")
    make_sample = make_crs_sample if config.task == "choice" else make_verify_sample
    quotas = {POSITIVE: config.positives, NEGATIVE: config.negatives}
    usable = Counter(_kind(sample) for sample in walk)
    target = sum(usable[kind] if quota is None else min(quota, usable[kind]) for kind, quota in quotas.items())
    kept = Counter()
    samples_file = output / SAMPLES_FILE
    written = _written_ids(samples_file)
    with _CandidateSource(config, output, detector) as candidates, JsonLinesAppender(samples_file) as out, \
            tqdm(total=target, desc="CRS samples kept", unit="sample", disable=not progress) as bar:
        for sample in walk:
            kind = _kind(sample)
            if quotas[kind] is not None and kept[kind] >= quotas[kind]:
                report.dropped[SAMPLED_OUT] += 1
                continue
            if str(sample.id) not in written:
                try:
                    usable = _with_clean_expression(sample)
                    out.write(make_sample(usable, *candidates.for_sample(usable), config).to_dict())
                except SampleDropped as dropped:
                    report.dropped[dropped.reason] += 1
                    bar.set_postfix(dropped=sum(report.dropped.values()), refresh=False)
                    continue
            kept[kind] += 1
            bar.update()
    report.kept_positives, report.kept_negatives = kept[POSITIVE], kept[NEGATIVE]
    if report.kept:
        kept_samples = read_samples(samples_file) if config.task == "choice" else [
            VerifySample.from_dict(record) for _, record in read_json_lines(samples_file)]
        export_llama_factory(kept_samples, output, config.dataset_name, prompts_dir=config.prompts_dir)
    write_atomically(output / REPORT_FILE, json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def make_crs_sample(sample: Sample, candidates: Detections, image_size: tuple[int, int],
                    config: BuildConfig) -> CRSSample:
    """The CRS question of ``sample`` given the specialist's ``candidates`` on its image of ``image_size``.

    Raises :class:`SampleDropped` when the sample yields no useful question.
    """
    if len(sample.boxes) > 1:
        raise SampleDropped(MULTI_TARGET)
    profile = get_profile(config.profile)
    rule = BoxFilter.crs(config.crs_top_k, config.crs_iou_threshold, profile.nms)
    options = crs_candidates(candidates, image_size, rule, drop_empty=profile.drop_empty_candidates)
    if not len(options):
        raise SampleDropped(NO_CANDIDATES)
    meta: dict[str, Any] = {"level": sample.level} if sample.level is not None else {}
    best = None  # the answer's position among the options, in detector order; None answers "None"
    if sample.has_target:
        ious = box_ops.box_iou(options.boxes, sample.boxes)[:, 0]
        best = int(np.argmax(ious))
        if ious[best] <= config.min_iou:
            raise SampleDropped(NO_CANDIDATE_OVER_IOU)
        meta["iou"] = round(float(ious[best]), 4)
    else:
        meta["negative"] = sample.negative_key or "no-target"
    if len(options) + config.offers_none < 2:
        raise SampleDropped(SINGLE_OPTION)
    order = list(range(len(options)))
    random.Random(_stable_int(config.seed, "options", sample.id)).shuffle(order)
    letters = option_letters(len(options), config.offers_none)
    answer = letters[-1] if best is None else letters[order.index(best)]
    meta["detector_ranks"] = order  # option i is the detector's order[i]-th box, for analysis
    return CRSSample(
        id=str(sample.id),
        # Absolute: a relative path would be read against the samples file's folder.
        image=os.path.abspath(sample.image_path),
        expression=sample.expression,
        candidates=tuple(tuple(float(v) for v in options.boxes[i]) for i in order),
        image_size=image_size,
        allow_none=config.offers_none,
        answer=answer,
        meta=meta,
    )


def make_verify_sample(sample: Sample, candidates: Detections, image_size: tuple[int, int],
                       config: BuildConfig) -> VerifySample:
    """The yes/no questions of ``sample``, one per CRS candidate (built as ``make_crs_sample`` builds
    its options): "yes" where the candidate's IoU with a ground-truth box exceeds ``min_iou``.

    Several ground-truth boxes are fine here (each candidate is judged alone); an expression without
    target asks only "no" questions. Raises :class:`SampleDropped` when there is no candidate.
    """
    profile = get_profile(config.profile)
    rule = BoxFilter.crs(config.crs_top_k, config.crs_iou_threshold, profile.nms)
    options = crs_candidates(candidates, image_size, rule, drop_empty=profile.drop_empty_candidates)
    if not len(options):
        raise SampleDropped(NO_CANDIDATES)
    ious = box_ops.box_iou(options.boxes, sample.boxes).max(axis=1) if sample.has_target else np.zeros(len(options))
    meta: dict[str, Any] = {"ious": [round(float(iou), 4) for iou in ious]}
    if not sample.has_target:
        meta["negative"] = sample.negative_key or "no-target"
    return VerifySample(
        id=str(sample.id),
        image=os.path.abspath(sample.image_path),
        expression=sample.expression,
        candidates=tuple(tuple(float(v) for v in box) for box in options.boxes),
        image_size=image_size,
        answers=tuple("yes" if iou > config.min_iou else "no" for iou in ious),
        meta=meta,
    )


class _CandidateSource:
    """A sample's top-10 candidates and image size, from the candidates file or the detector.

    Detector results are appended to ``candidates.jsonl`` in the output folder as they come,
    and read back from there on a resumed build instead of running the detector again.
    """

    def __init__(self, config: BuildConfig, output: Path, detector: Detector | None):
        self.detector = detector
        self.config = config
        self.cache_writer: PredictionWriter | None = None
        if config.candidates_file:
            known = read_predictions(config.candidates_file)
        else:
            cache = output / DETECTOR_CANDIDATES_FILE
            self.cache_writer = PredictionWriter(cache)  # opened first: it repairs a torn last line
            known = read_predictions(cache)
        # The path's own scores: an eval predictions file writes decision-aligned ones beside them.
        self.known = {str(prediction.id): prediction.raw_detections for prediction in known}

    def for_sample(self, sample: Sample) -> tuple[Detections, tuple[int, int]]:
        try:
            image = load_image(sample.image_path)
        except ImageLoadError:
            raise SampleDropped(UNREADABLE_IMAGE) from None
        key = str(sample.id)
        if key not in self.known:
            if self.cache_writer is None:
                raise SampleDropped(MISSING_CANDIDATES)
            detector = self._detector()
            # Under the reference profile the detector resizes as the authors' mmdetection did.
            resize = resize_option(detector, get_profile(self.config.profile).detector_resize)
            found = detector.detect(image, sample.expression, **resize).top_k(DETECTOR_TOP_K)
            self.cache_writer.write(Prediction(sample.id, found))
            self.known[key] = found
        return self.known[key], image.size

    def _detector(self) -> Detector:
        if self.detector is None:  # loaded on first need: a fully cached resume never loads it
            from tools.detectors.auto import load_detector

            config = self.config
            self.detector = load_detector(config.detector, device=config.device, dtype=config.dtype)
        return self.detector

    def __enter__(self) -> "_CandidateSource":
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.cache_writer is not None:
            self.cache_writer.close()


def _with_clean_expression(sample: Sample) -> Sample:
    """``sample`` with its expression cleaned as ``locate`` cleans it (control characters,
    control markup), or dropped when that leaves no usable expression."""
    try:
        return replace(sample, expression=clean_expression(sample.expression))
    except UserInputError:
        raise SampleDropped(UNUSABLE_EXPRESSION) from None


def _kind(sample: Sample) -> str:
    """Positive (one target) or negative (FineCops-Ref negative, gRefCOCO no-target): two quotas."""
    return POSITIVE if sample.has_target else NEGATIVE


def _visiting_order(samples: list[Sample], seed: int, report: BuildReport, *,
                    drop_multi_target: bool = True) -> list[Sample]:
    """The samples worth a candidate look, in the seeded order the quotas are filled in.

    Multi-target samples (unless kept for verification) are counted as dropped here, before any
    image is opened.
    """
    seen: set[str] = set()
    walk = []
    for sample in samples:
        if str(sample.id) in seen:  # resuming and quotas go by id, so an id must name one sample
            raise UserInputError(f"{sample.id!r} names two samples; ids must be unique")
        seen.add(str(sample.id))
        if drop_multi_target and len(sample.boxes) > 1:
            report.dropped[MULTI_TARGET] += 1
        else:
            walk.append(sample)
    return sorted(walk, key=lambda sample: (_stable_int(seed, "order", sample.id), str(sample.id)))


def _stable_int(seed: int, purpose: str, sample_id: int | str) -> int:
    """A 64-bit number fixed by its arguments (Python's ``hash`` changes between runs)."""
    digest = hashlib.sha256(f"{seed}/{purpose}/{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _written_ids(path: Path) -> set[str]:
    """Ids of the samples a previous run of this build already wrote (a torn last line ignored)."""
    if not path.exists():
        return set()
    ids = set()
    for where, record in read_json_lines(path):
        if not isinstance(record, dict) or "id" not in record:
            raise UserInputError(f"{where}: not a CRS sample; rebuild in a new folder")
        ids.add(str(record["id"]))
    return ids
