"""What a ``finetune-data`` build depends on (``BuildConfig``, each field an option of the
command with its help), the files of its output folder, and the checks a build's settings and
folder pass before any sample is read."""

from __future__ import annotations

import json
import os
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prompts import check_prompts_dir
from tools.defaults import CRS_CANDIDATES
from tools.errors import UserInputError
from tools.evaluation.formats import FORMAT_HELP
from tools.files import BUILD_MARKER, MAX_NAME_BYTES, check_output_folder, check_outputs, foreign_runs
from tools.files import read_settings_file, write_atomically
from tools.profiles import PROFILES, get_profile
from tools.settings import setting

from .samples import DATASET_INFO_FILE

# The paper offers CRS the specialist's ten best boxes on the full expression.
DETECTOR_TOP_K = 10
SAMPLES_FILE = "samples.jsonl"
DETECTOR_CANDIDATES_FILE = "candidates.jsonl"
SETTINGS_FILE = BUILD_MARKER
REPORT_FILE = "report.json"
TASKS = ("choice", "verify")

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


def claim_output_dir(output: Path, config: BuildConfig) -> None:
    """Record the settings in ``build.json``, or check that a resumed build uses the same ones."""
    settings = result_settings(config)
    settings_file = output / SETTINGS_FILE
    if settings_file.exists():
        previous = read_settings_file(settings_file, "a finetune-data build's settings")
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


def result_settings(config: BuildConfig) -> dict[str, Any]:
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


def check_config(config: BuildConfig) -> None:
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
                                               "--candidates": config.candidates_file},
                  foreign=foreign_runs(SETTINGS_FILE))
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
