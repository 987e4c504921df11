"""Per-query FLOPs of each strategy, composed from the FLOPs of its model calls, and the issue's targets.

A query answered by SFA costs the router (the detector on the target phrase), the
target extraction (the LLM text-only) and then, for a share ``p`` of Level-1 queries, the
specialist (the detector on the full expression, reusing the router's image backbone
pass on the same image), else the MLLM's grounding (with the target-focus prompt). ``sfa+crs`` runs the specialist on every query (its boxes are the
CRS candidates at Level 2), in the same batched detector call as the router, which computes
the text-independent image backbone once for both; it adds the CRS forward for Level-2
queries. The baseline,
"MLLM-only", is direct grounding with the reference prompt and no extraction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

DEFAULT_LEVEL1_SHARE = 0.54
SFA_TARGET_RATIO = 0.55  # SFA at most 55% of MLLM-only FLOPs (Qwen2-VL-7B with MM-GDINO-L)
CRS_TARGET_RATIO = 1.1  # CRS at most 1.1x the prefill FLOPs of direct grounding
# SFA with the target extraction a single query uses, as a share of MLLM-only, per detector
# (with Qwen2-VL-7B): the goals of making extraction nearly free.
EXTRACTION_GOALS = {"MM-GDINO-L": 1.0, "MM-GDINO-T": 0.60}


@dataclass(frozen=True)
class DetectorFlops:
    """FLOPs of the detector's two calls in a query."""

    name: str
    router: float  # forward on the target phrase
    specialist: float  # forward on the full expression
    backbone: float = 0.0  # the image backbone's part of each forward (text-independent)


@dataclass(frozen=True)
class MllmFlops:
    """FLOPs of the MLLM's calls in a query; every multimodal prefill includes the vision tower."""

    name: str
    vision: float  # the vision tower on the image, part of each prefill below
    ground_prefill: float  # reference grounding prompt
    ground_decode: float  # the decode steps of a typical box answer
    focus_prefill: float  # grounding prompt with " Please focus on {target}."
    focus_decode: float
    crs_prefill: float  # the CRS question: one forward, nothing decoded
    extract_prefill: float  # target extraction, text only
    extract_decode: float

    @property
    def grounding(self) -> float:
        return self.ground_prefill + self.ground_decode

    @property
    def focus_grounding(self) -> float:
        return self.focus_prefill + self.focus_decode

    @property
    def extraction(self) -> float:
        return self.extract_prefill + self.extract_decode

    def to_dict(self) -> dict:
        return {**asdict(self), "grounding": self.grounding, "focus_grounding": self.focus_grounding,
                "extraction": self.extraction}


@dataclass(frozen=True)
class ExtractionMode:
    """One way of extracting the target, and what it costs per query."""

    name: str
    used_by: str
    flops: float  # local FLOPs per query (0 for the heuristic and for a remote model)
    prompt_tokens: float  # input tokens per query the model computes (cached ones excluded)
    answer_tokens: float  # generated tokens per query

    def to_dict(self) -> dict:
        return asdict(self)


def path_flops(
    detector: DetectorFlops,
    mllm: MllmFlops,
    level1_share: float = DEFAULT_LEVEL1_SHARE,
    extraction: float | None = None,
) -> dict[str, float]:
    """Expected FLOPs per query of each strategy, Level-1 queries being ``level1_share`` of all;
    target extraction costs ``extraction`` (default ``mllm.extraction``: one uncached prompt)."""
    if not 0 <= level1_share <= 1:
        raise ValueError(f"the Level-1 share must lie in [0, 1], got {level1_share}")
    extraction = mllm.extraction if extraction is None else extraction
    p = level1_share
    # The detector keeps the last image's backbone outputs: the specialist call after the router reuses them.
    sfa = detector.router + p * (detector.specialist - detector.backbone) + (1 - p) * mllm.focus_grounding
    # Router and specialist in one batched call share one backbone pass (GroundingDinoDetector.detect_many).
    sfa_crs = detector.router + detector.specialist - detector.backbone + (1 - p) * mllm.crs_prefill
    return {
        "specialist": detector.specialist,
        "mllm": mllm.grounding,
        "crs": detector.specialist + mllm.crs_prefill,
        "sfa": sfa + extraction,
        "sfa+crs": sfa_crs + extraction,
        "sfa (no extraction)": sfa,
        "sfa+crs (no extraction)": sfa_crs,
    }


def ratios_to_mllm(paths: dict[str, float]) -> dict[str, float]:
    """Each strategy's FLOPs as a share of MLLM-only grounding."""
    return {name: flops / paths["mllm"] for name, flops in paths.items()}


@dataclass(frozen=True)
class Target:
    """One of the issue's targets, and whether the measured value meets it."""

    name: str
    value: float
    limit: float
    met: bool

    def to_dict(self) -> dict:
        return asdict(self)


def check_targets(detector: DetectorFlops, mllm: MllmFlops, level1_share: float = DEFAULT_LEVEL1_SHARE) -> list[Target]:
    """The issue's FLOP targets for one detector + MLLM pair (the issue names MM-GDINO-L + Qwen2-VL-7B)."""
    ratios = ratios_to_mllm(path_flops(detector, mllm, level1_share))
    crs_vs_prefill = mllm.crs_prefill / mllm.ground_prefill
    targets = [
        Target(f"{name} / MLLM-only <= {SFA_TARGET_RATIO:.0%}", ratios[name], SFA_TARGET_RATIO,
               ratios[name] <= SFA_TARGET_RATIO)
        for name in ("sfa", "sfa (no extraction)")
    ]
    targets += [
        Target(f"{crs} < {sfa} (ratio of the two)", ratios[crs] / ratios[sfa], 1.0, ratios[crs] < ratios[sfa])
        for crs, sfa in (("sfa+crs", "sfa"), ("sfa+crs (no extraction)", "sfa (no extraction)"))
    ]
    targets.append(Target(f"CRS / grounding prefill <= {CRS_TARGET_RATIO}", crs_vs_prefill, CRS_TARGET_RATIO,
                          crs_vs_prefill <= CRS_TARGET_RATIO))
    return targets


def extraction_targets(
    detectors: dict[str, DetectorFlops],
    mllm: MllmFlops,
    mode: ExtractionMode,
    level1_share: float = DEFAULT_LEVEL1_SHARE,
) -> list[Target]:
    """SFA's share of MLLM-only FLOPs with extraction ``mode``, against ``EXTRACTION_GOALS``."""
    targets = []
    for name, limit in EXTRACTION_GOALS.items():
        ratio = ratios_to_mllm(path_flops(detectors[name], mllm, level1_share, mode.flops))["sfa"]
        targets.append(Target(f"sfa ({mode.name}), {name} / MLLM-only <= {limit:.0%}", ratio, limit, ratio <= limit))
    return targets
