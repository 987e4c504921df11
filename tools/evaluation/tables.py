"""The score tables of each metric, as ``rich`` tables (``agent-cli score``, ``agent-cli eval``)."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table


def finecops_tables(result: dict[str, Any]) -> list[Table]:
    counts = result["counts"]
    precision = Table("level", "P@1", "P@5", "P@10", "positives", title="Precision@k (%)")
    for level in result["precision_at_1"]:
        row = [_pct(result[f"precision_at_{k}"][level]) for k in (1, 5, 10)]
        precision.add_row(escape(level), *row, str(counts["positives"][level]))
    tables = [precision]
    if result["precision_at_1_by_route"]:
        routes = Table("route level", "P@1", title="Precision@1 by SFA route (%)")
        for route, value in result["precision_at_1_by_route"].items():
            routes.add_row(escape(str(route)), _pct(value))
        tables.append(routes)
    if counts["negatives"]:
        recall = Table("negative type/level/cate", "R@1", "R@5", "R@10", "pairs", title="Recall@k (%)")
        for key in result["recall_at_1"]:
            row = [_pct(result[f"recall_at_{k}"][key]) for k in (1, 5, 10)]
            recall.add_row(escape(key), *row, str(counts["recall_groups"][key]))
        separation = Table("negatives", "AUROC", "FPR@95", "AUPR", "count", title="Positives vs negatives (%)")
        separation.add_row("all (vs level-1 positives)", *map(_pct, (result["auroc"], result["fpr95"], result["aupr"])),
                           str(counts["negatives"]))
        for key in result["auroc_by_key"]:
            values = (result["auroc_by_key"][key], result["fpr95_by_key"][key], result["aupr_by_key"][key])
            separation.add_row(escape(key), *map(_pct, values), str(counts["negatives_by_key"][key]))
        crs = Table("CRS accuracy", "positives", "negatives (no box)", title="Answer accuracy (%)")
        crs.add_row("", _pct(result["crs_accuracy"]["positive"]), _pct(result["crs_accuracy"]["negative"]))
        tables += [recall, separation, crs]
    return tables


def refcoco_tables(result: dict[str, Any]) -> list[Table]:
    table = Table("Acc@0.5", "P@5", "P@10", "samples", title="RefCOCO accuracy (%)")
    table.add_row(*map(_pct, (result["accuracy"], result["precision_at_5"], result["precision_at_10"])),
                  str(result["counts"]["samples"]))
    return [table]


def grec_tables(result: dict[str, Any]) -> list[Table]:
    settings = result["settings"]
    title = f"GREC (%), {settings['matching']} >= {settings['iou_threshold']}, score >= {settings['score_threshold']}"
    table = Table("Pr@(F1=1, IoU>=0.5)", "N-acc", "T-acc", "samples", "no-target", title=title)
    counts = result["counts"]
    table.add_row(*map(_pct, (result["f1_precision"], result["n_acc"], result["t_acc"])),
                  str(counts["samples"]), str(counts["no_target"]))
    return [table]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
