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
the same final files as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tools import boxes as box_ops
from tools.datasets import Sample
from tools.evaluation.formats import FORMAT_HELP, read_dataset
from tools.detections import Detections
from tools.detectors import Detector
from tools.files import MAX_NAME_BYTES, JsonLinesAppender, check_output_folder, check_outputs, read_json_lines
from tools.files import write_atomically
from tools.errors import ImageLoadError, UserInputError
from tools.evaluation import Prediction, PredictionWriter, read_predictions
# The predictions writer's torn-last-line repair serves the samples file just as well.
from tools.images import load_image
from tools.mllm.crs import option_letters
from prompts import check_prompts_dir
from tools.detectors.base import resize_option
from tools.profiles import PROFILES, get_profile
from tools.routing import CRS_CANDIDATES, BoxFilter, crs_candidates
from tools.settings import setting
from tools.text import clean_expression

from .samples import DATASET_INFO_FILE, CRSSample, export_llama_factory, read_samples
from .verify_samples import VerifySample

# The paper offers CRS the specialist's ten best boxes on the full expression.
DETECTOR_TOP_K = 10
SAMPLES_FILE = "samples.jsonl"
DETECTOR_CANDIDATES_FILE = "candidates.jsonl"
SETTINGS_FILE = "build.json"
REPORT_FILE = "report.json"
POSITIVE, NEGATIVE = "positive", "negative"
TASKS = ("choice", "verify")

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


# Settings of builds written before they took the agent's names (their build.json still resumes).
RENAMED_SETTINGS = {"top_k": "crs_top_k", "nms_iou": "crs_iou_threshold", "none_option": "allow_none"}
# Files of the output folder a dataset name would overwrite (``<name>.json``).
RESERVED_NAMES = frozenset(Path(name).stem for name in (DATASET_INFO_FILE, REPORT_FILE, SETTINGS_FILE))


@dataclass(frozen=True)
class BuildConfig:
    """Everything a build depends on, each an option of ``agent-cli finetune-data`` with its help;
    give exactly one of ``detector`` and ``candidates_file``. The CRS settings carry the agent's
    names (``crs_top_k``, ``crs_iou_threshold``, ``allow_none``)."""

    dataset_format: str = setting(help=FORMAT_HELP + " (see the README).", flag="--format")
    annotations: str = setting(help="The dataset's annotation file.", path=True)
    output_dir: str = setting(help="Folder for the samples, the report; rerun to resume.", flag="--output", path=True)
    image_root: str | None = setting(None, "Folder the file names are relative to.", path=True)
    split: str | None = setting(None, "gRefCOCO split (grefcoco only), e.g. train.")
    detector: str | None = setting(None, "Detector Hub id or folder computing the candidates (Grounding DINO, "
                                         "MM-GDINO, OWLv2, Florence-2).")
    candidates_file: str | None = setting(None, 'Cached candidates instead of a detector: JSON Lines {"id", "boxes", '
                                                '"scores"} (a predictions file).', flag="--candidates", path=True)
    positives: int | None = setting(None, "Positives to keep, drawn with --seed (paper: 10000); default: all.",
                                    minimum=0)
    negatives: int | None = setting(0, "Negatives / no-target samples to keep, answered None (paper: 2500).",
                                    minimum=0)
    crs_top_k: int = setting(CRS_CANDIDATES.top_k, f"Candidates offered before NMS (at most {DETECTOR_TOP_K}).",
                             renamed_from=("--top-k",))
    crs_iou_threshold: float = setting(CRS_CANDIDATES.iou_threshold, "NMS IoU over the candidates.",
                                       renamed_from=("--nms",))
    profile: str = setting("default", f"{' or '.join(PROFILES)}: how candidates are built, as CRS builds them.")
    min_iou: float = setting(0.5, "Keep a positive when a candidate's IoU exceeds this.")
    seed: int = setting(0, "Fixes which samples are drawn and how their options are shuffled.")
    allow_none: bool | None = setting(None, "Offer 'None' on every sample; default: exactly when --negatives is "
                                            "above 0.", renamed_from=("--none-option",))
    dataset_name: str = setting("rex_crs", "LLaMA-Factory dataset name and file.")
    prompts_dir: str | None = setting(None, "Your own prompt templates.")
    device: str = setting("auto", "Detector device: auto, cpu, cuda or cuda:N.")
    dtype: str = setting("auto", "Detector weights: auto, fp32, fp16 or bf16.")
    task: str = setting("choice", "choice: multiple-choice samples (the paper's CRS); verify: a yes/no question per "
                                  "candidate (IoU above --min-iou: yes), for crs_mode verify.")

    @property
    def offers_none(self) -> bool:
        """Whether every sample offers the "None" option (see the module docstring)."""
        return self.allow_none if self.allow_none is not None else self.negatives != 0


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

    _check_config(config)
    output = Path(config.output_dir)
    _claim_output_dir(output, config)
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


def _claim_output_dir(output: Path, config: BuildConfig) -> None:
    """Record the settings in ``build.json``, or check that a resumed build uses the same ones."""
    settings = _result_settings(config)
    settings_file = output / SETTINGS_FILE
    if settings_file.exists():
        previous = json.loads(settings_file.read_text(encoding="utf-8"))
        previous = {RENAMED_SETTINGS.get(name, name): value for name, value in previous.items()}
        changed = sorted(name for name in settings.keys() | previous.keys()
                         if settings.get(name) != previous.get(name))
        if changed:
            raise UserInputError(f"{output} holds a build with other settings ({', '.join(changed)}); "
                                 "resume with the same settings or choose a new --output")
        return
    if (output / SAMPLES_FILE).exists():
        raise UserInputError(f"{output / SAMPLES_FILE} exists without {SETTINGS_FILE}; choose a new --output")
    output.mkdir(parents=True, exist_ok=True)
    write_atomically(settings_file, json.dumps(settings, indent=2) + "\n")


def _result_settings(config: BuildConfig) -> dict[str, Any]:
    """The settings the samples depend on (not the device, the dtype or the export's name)."""
    settings = asdict(config)
    for name in ("output_dir", "dataset_name", "prompts_dir", "device", "dtype"):
        del settings[name]
    for name in ("annotations", "image_root", "candidates_file", "detector"):
        # Paths compare absolute, so a resume from another working folder still matches.
        if settings[name] is not None and os.path.exists(settings[name]):
            settings[name] = os.path.abspath(settings[name])
    settings["allow_none"] = config.offers_none
    return settings


def _check_config(config: BuildConfig) -> None:
    get_profile(config.profile)
    check_output_folder(config.output_dir)
    check_prompts_dir(config.prompts_dir)
    name = config.dataset_name
    if not name or any(sep in name for sep in ("/", "\\", "..")) or name.startswith("."):
        raise UserInputError(f"--dataset-name {name!r}: a plain file name, without folders or '..'")
    if name in RESERVED_NAMES or any(unicodedata.category(c) in ("Cc", "Cs") for c in name) \
            or len(f"{name}.json".encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise UserInputError(f"--dataset-name {name!r:.80}: not one of {', '.join(sorted(RESERVED_NAMES))} (files the "
                             f"build writes), without control characters, at most {MAX_NAME_BYTES - 5} bytes")
    written = [SAMPLES_FILE, SETTINGS_FILE, REPORT_FILE, f"{name}.json", DATASET_INFO_FILE]
    written += [] if config.candidates_file else [DETECTOR_CANDIDATES_FILE]
    check_outputs(config.output_dir, written, {"--annotations": config.annotations,
                                               "--candidates": config.candidates_file})
    if (config.detector is None) == (config.candidates_file is None):
        raise UserInputError("give either a detector or a candidates file")
    if config.crs_top_k < 1 or config.crs_top_k > DETECTOR_TOP_K:
        raise UserInputError(f"crs_top_k must be between 1 and {DETECTOR_TOP_K}, got {config.crs_top_k}")
    if config.candidates_file is not None and not Path(config.candidates_file).is_file():
        raise UserInputError(f"no candidates file {config.candidates_file!r}")
    if not 0 <= config.crs_iou_threshold <= 1 or not 0 <= config.min_iou < 1:
        raise UserInputError("crs_iou_threshold must lie in [0, 1] and min_iou in [0, 1)")
    if any(quota is not None and quota < 0 for quota in (config.positives, config.negatives)):
        raise UserInputError("positives and negatives must be at least 0")
    if config.task not in TASKS:
        raise UserInputError(f"unknown task {config.task!r}; choose one of {', '.join(TASKS)}")
    if config.allow_none is False and config.negatives != 0:
        raise UserInputError("negatives answer 'None': they need the None option (drop --no-allow-none)")
