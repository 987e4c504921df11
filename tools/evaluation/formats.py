"""The dataset formats, declared once: per format its reader, its metric, headline and tables.

``agent-cli score``, ``agent-cli eval``, its report and ``agent-cli finetune-data`` all read
this registry. Adding a format is one ``DatasetFormat`` entry (and, for a new kind of score,
one ``Metric``)::

    FORMATS["my-rec"] = DatasetFormat("my-rec", read_my_rec, REFCOCO, "my data in the MDETR shape")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..datasets.coco import read_finecops_ref, read_grec, read_ref_adv, read_ref_reasoning, read_refcoco
from ..datasets.grefcoco import read_grefcoco
from ..datasets.sample import Sample
from ..errors import UserInputError
from .finecops import finecops_outcome, score_finecops_ref
from .grec import grec_outcome, score_grec
from .refcoco import refcoco_outcome, score_refcoco
from .tables import finecops_tables, grec_tables, refcoco_tables


@dataclass(frozen=True)
class Metric:
    """How a kind of benchmark is scored and shown."""

    name: str
    # score(samples, predictions, *, allow_missing=False, **options) -> a dict of percentages
    score: Callable[..., dict[str, Any]]
    # The keyword options ``score`` takes beyond ``allow_missing`` (``agent-cli score`` flags).
    options: tuple[str, ...]
    # The chart of ``report.png``: its title and one run's bars.
    headline_title: str
    headline: Callable[[dict[str, Any]], dict[str, float | None]]
    tables: Callable[[dict[str, Any]], list]
    # outcome(sample, prediction, **options) -> (part, hit): one sample's share of the number
    # ``agent-cli calibrate`` maximises, the mean over parts of each part's hit rate (GREC: Pr@(F1=1);
    # RefCOCO: Acc@0.5; FineCops-Ref: Precision@1 of the positives and rejection of the negatives).
    outcome: Callable[..., tuple[str, bool]]
    # Negatives are scored against their positive: a --limit must keep pairs whole, and the
    # report draws the confidences of positives and negatives.
    paired_negatives: bool = False


FINECOPS = Metric(
    "finecops", score_finecops_ref, ("confidence", "crs_letters", "iou_strict", "fold_level_3"),
    "Precision@1 by level (%)",
    lambda m: dict(m["precision_at_1"]), finecops_tables, finecops_outcome, paired_negatives=True,
)
REFCOCO = Metric("refcoco", score_refcoco, (), "Acc@0.5 (%)", lambda m: {"all": m["accuracy"]}, refcoco_tables,
                 refcoco_outcome)
GREC = Metric(
    "grec", score_grec, ("score_threshold", "matching"), "GREC (%)",
    lambda m: {"Pr@(F1=1)": m["f1_precision"], "N-acc": m["n_acc"], "T-acc": m["t_acc"]}, grec_tables,
    grec_outcome,
)


@dataclass(frozen=True)
class DatasetFormat:
    name: str
    # reader(annotations, image_root) -> samples; with ``splits``, reader(annotations, image_root, split)
    reader: Callable[..., Iterator[Sample]]
    metric: Metric
    description: str
    splits: bool = False


FORMATS: dict[str, DatasetFormat] = {
    entry.name: entry
    for entry in (
        DatasetFormat("finecops-ref", read_finecops_ref, FINECOPS, "FineCops-Ref COCO file: positives, negatives, levels"),
        DatasetFormat("ref-adv", read_ref_adv, FINECOPS, "Ref-Adv, the FineCops-Ref shape, level optional"),
        DatasetFormat("ref-reasoning", read_ref_reasoning, FINECOPS, "Ref-Reasoning, the FineCops-Ref shape"),
        DatasetFormat("refcoco", read_refcoco, REFCOCO, "RefCOCO/RefCOCO+/RefCOCOg in the MDETR COCO format"),
        DatasetFormat("grefcoco", read_grefcoco, GREC, "gRefCOCO as released (grefs(unc).json + instances.json)",
                      splits=True),
        DatasetFormat("grec", read_grec, GREC, "gRefCOCO converted for the GREC evaluator (category_id -1: none)"),
    )
}
FORMAT_HELP = ", ".join(FORMATS)


def get_format(name: str) -> DatasetFormat:
    if name not in FORMATS:
        raise UserInputError(f"unknown dataset format {name!r}; choose one of {FORMAT_HELP}")
    return FORMATS[name]


def read_dataset(
    format: str, annotations: str | Path, image_root: str | Path | None = None, split: str | None = None
) -> Iterator[Sample]:
    """Samples of ``annotations`` in ``format`` (one of :data:`FORMATS`), read lazily.

    ``image_root`` is joined to each ``file_name`` (without it, ``image_path`` is the bare
    ``file_name``). ``split`` selects a gRefCOCO split; COCO-style files hold one split
    each, so it is refused for the other formats.
    """
    entry = get_format(format)
    if image_root is not None and not Path(image_root).is_dir():
        problem = "is not a folder" if Path(image_root).exists() else "does not exist"
        raise UserInputError(f"--image-root {str(image_root)!r} {problem}")
    if entry.splits:
        return entry.reader(annotations, image_root, split)
    if split is not None:
        raise UserInputError(f"a split applies to {', '.join(f.name for f in FORMATS.values() if f.splits)} only; "
                             f"a {format} file holds one split")
    return entry.reader(annotations, image_root)
