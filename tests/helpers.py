"""Helpers shared by several test modules: tiny dataset files, the server's plug-in agent and
requests, scripted Qwen answers, calibration runs, the FineCops-Ref metric fixtures."""

from __future__ import annotations

import io
import json
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image

from agent import Agent
from agent.configuration import Configuration
from tools.detections import Detections
from tools.errors import RemoteServiceError
from tools.evaluation import PredictionWriter
from tools.mllm.qwen import QwenVL


def cli(capsys, *args) -> tuple[int, str, str]:
    """``agent-cli ARGS`` in this process: its exit code, stdout and stderr."""
    from agent.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def write_lines(path, records):
    """``records`` as a JSON Lines file at ``path``."""
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def without_timings(result) -> dict:
    """A result (or its ``to_dict()``) without its timings, which differ from run to run."""
    data = result if isinstance(result, dict) else result.to_dict()
    return {key: value for key, value in data.items() if key != "timings"}


# ---------------------------------------------------------------- from test_datasets

def image_entry(image_id, caption="the cup", file_name=None, width=100, height=100, **extra):
    return {"id": image_id, "caption": caption, "file_name": file_name or f"{image_id}.jpg",
            "width": width, "height": height, **extra}


def annotation(ann_id, image_id, bbox, **extra):
    return {"id": ann_id, "image_id": image_id, "bbox": bbox, "category_id": 1, **extra}


def write_json(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def negative_fields(positive_id, negative_type="attribute", negative_level=1, negative_cate="text"):
    return {"negative_type": negative_type, "negative_level": negative_level, "negative_cate": negative_cate,
            "positive_id": positive_id, "tuple_type": "2_hop"}


def grefcoco_files(tmp_path):
    refs = [
        {"ref_id": 1, "image_id": 7, "split": "val", "file_name": "COCO_train2014_000000000007_5.jpg",
         "ann_id": [5, 6], "no_target": False, "sentences": [{"sent": "both cups", "sent_id": 10},
                                                             {"sent": "the two cups", "sent_id": 11}]},
        {"ref_id": 2, "image_id": 7, "split": "val", "file_name": "COCO_train2014_000000000007_5.jpg",
         "ann_id": [-1], "no_target": True, "sentences": [{"sent": "the purple cup", "sent_id": 12}]},
        {"ref_id": 3, "image_id": 7, "split": "train", "file_name": "COCO_train2014_000000000007_6.jpg",
         "ann_id": 6, "no_target": False, "sentences": [{"sent": "the right cup", "sent_id": 13}]},
    ]
    instances = {
        "images": [{"id": 7, "file_name": "COCO_train2014_000000000007.jpg", "width": 640, "height": 480}],
        "annotations": [
            {"id": 5, "image_id": 7, "bbox": [0, 0, 10, 10]},
            {"id": 6, "image_id": 7, "bbox": [5, 5, 1, 2]},
        ],
        "categories": [],
    }
    write_json(tmp_path, "instances.json", instances)
    return write_json(tmp_path, "grefs(unc).json", refs)


# ---------------------------------------------------------------- from test_serve_api

EXPRESSION = "the red car to the left of the green car"


def png(size=(160, 120)) -> bytes:
    image = Image.new("RGB", size, (90, 120, 160))
    image.paste((200, 30, 30), (10, 40, 40, 100))
    image.paste((30, 200, 30), (70, 40, 100, 100))
    encoded = io.BytesIO()
    image.save(encoded, "PNG")
    return encoded.getvalue()


def post(client, image=None, expression=EXPRESSION, **fields):
    data = {name: str(value).lower() if isinstance(value, bool) else value for name, value in fields.items()}
    if expression is not None:
        data["expression"] = expression
    files = {"image": ("street.png", png() if image is None else image, "image/png")} if image is not False else None
    return client.post("/locate", data=data, files=files)


class ServedDetector:
    def __init__(self, failure=None):
        self.failure = failure

    def detect(self, image, text, focus=None):
        if self.failure:
            raise self.failure
        return [[10, 20, 60, 90], [70, 20, 120, 90]], [0.9, 0.4]


class FailingGroundMLLM:
    def ground(self, image, expression, focus=None):
        raise RemoteServiceError("http://gpu-box:8000/v1: 503 Service Unavailable after 3 retries")

    def select(self, image, expression, candidates, allow_none=False):
        return [0.6, 0.4] + ([0.0] if allow_none else [])


def plugin_agent(**kwargs) -> Agent:
    return Agent("crs", detector=kwargs.pop("detector", ServedDetector()), mllm=FailingGroundMLLM(), extractor="heuristic",
                 config=Configuration(), **kwargs)


# ---------------------------------------------------------------- from test_mllm_qwen

CANDIDATES = Detections(
    [[10, 40, 40, 100], [70, 40, 100, 100], [120, 40, 150, 100], [0, 0, 80, 60], [80, 60, 160, 120]],
    [0.9, 0.8, 0.7, 0.6, 0.5],
)


@contextmanager
def boosted_tokens(model: QwenVL, token_ids, amount: float = 20.0):
    """Add ``amount`` to the next-token logits of ``token_ids`` at every forward pass."""

    def hook(module, inputs, output):
        output = output.clone()
        output[..., -1, list(token_ids)] += amount
        return output

    handle = model.model.lm_head.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def scripted_answer(model: QwenVL, token_ids, margin: float = 1.0):
    """Make greedy decoding write ``token_ids``; yields the list of next-token logits returned."""
    returned: list[torch.Tensor] = []

    def hook(module, inputs, output):
        output = output.clone()
        last = output[..., -1, :]
        target = token_ids[min(len(returned), len(token_ids) - 1)]
        last[..., target] = last.max(dim=-1).values + margin
        returned.append(last.detach().clone())
        return output

    handle = model.model.lm_head.register_forward_hook(hook)
    try:
        yield returned
    finally:
        handle.remove()


def encode(model: QwenVL, text: str) -> list[int]:
    return model.tokenizer.encode(text, add_special_tokens=False)


def special(model: QwenVL, token: str) -> int:
    return model.tokenizer.convert_tokens_to_ids(token)


# ---------------------------------------------------------------- from test_calibration

RIGHT, OTHER, WRONG = [0, 0, 10, 10], [20, 0, 30, 10], [50, 50, 90, 90]


def grec_split(tmp_path, count=12):
    """Two-target expressions (even ids) and no-target ones (odd ids)."""
    images, annotations = [], []
    for i in range(count):
        images.append(image_entry(i, "both cups" if i % 2 == 0 else "the flying cup"))
        if i % 2 == 0:
            annotations += [annotation(10 * i, i, [0, 0, 10, 10]), annotation(10 * i + 1, i, [20, 0, 10, 10])]
        else:
            annotations.append(annotation(10 * i, i, [0, 0, 0, 0], category_id=-1))
    return write_json(tmp_path, "grec_dev.json", {"images": images, "annotations": annotations})


def verification_run(tmp_path, count=12, verify_threshold=0.5):
    """An eval run folder: crs + verify records. Targets' boxes say yes with 0.9-0.95, the wrong
    box of a two-target expression with 0.8, a no-target expression's boxes with at most 0.85:
    every threshold in (0.85, 0.9] is perfect, and 0.5 is not."""
    run = tmp_path / "run"
    run.mkdir()
    settings = Configuration(strategy="crs", allow_none=True, multi="auto", crs_mode="verify",
                             verify_threshold=verify_threshold).to_dict()
    (run / "run.json").write_text(json.dumps({"version": 1, "agent": settings, "dataset": {}}))
    rng = np.random.default_rng(0)
    with PredictionWriter(run / "predictions.jsonl") as writer:
        for i in range(count):
            if i % 2 == 0:
                boxes, yes = [RIGHT, OTHER, WRONG], [rng.uniform(0.9, 0.95), rng.uniform(0.9, 0.95), 0.8]
            else:
                boxes, yes = [OTHER, WRONG], [0.85, rng.uniform(0.71, 0.8)]
            from tools.evaluation import Prediction
            from tools.detections import Detections

            record = Prediction(i, Detections.empty(), {
                "path": "crs", "expected_count": "many" if i % 2 == 0 else 1,
                "candidates": {"boxes": boxes, "scores": [0.5] * len(boxes)}, "verification": [float(v) for v in yes]})
            writer.write(record)
    return run


# ---------------------------------------------------------------- from test_metrics

# Three positives (levels 1-3) and four negatives; boxes xywh in the file.
FINECOPS_COCO = {
    "images": [image_entry(i) for i in (1, 2, 3, 11, 12, 13, 21)],
    "annotations": [
        annotation(1, 1, [0, 0, 10, 10], level=1),
        annotation(2, 2, [50, 50, 10, 10], level=2),
        annotation(3, 3, [20, 20, 20, 20], level=3),
        annotation(11, 11, [0, 0, 10, 10], level=1, **negative_fields(1, "attribute", 1, "text")),
        annotation(12, 12, [0, 0, 10, 10], level=1, **negative_fields(1, "attribute", 1, "text")),
        annotation(13, 13, [0, 0, 10, 10], level=1, **negative_fields(1, "replace", 1, "image")),
        annotation(21, 21, [50, 50, 10, 10], level=2, **negative_fields(2, "attribute", 1, "text")),
    ],
}


FINECOPS_PREDICTIONS = [
    {"id": 1, "boxes": [[0, 0, 10, 10], [30, 30, 40, 40]], "scores": [0.6, 0.9]},  # the right box ranks second
    {"id": 2, "boxes": [[50, 50, 60, 60]], "scores": [0.8]},
    {"id": 3, "boxes": [], "scores": []},  # unparseable answer
    {"id": 11, "boxes": [[1, 1, 2, 2]], "scores": [0.7]},
    {"id": 12, "boxes": [[5, 5, 6, 6], [7, 7, 8, 8]], "scores": [0.5, 0.95]},
    {"id": 13, "boxes": [], "scores": []},  # rejected ("None")
    {"id": 21, "boxes": [[0, 0, 1, 1]], "scores": [0.8]},  # ties with its positive's 0.8
]


# ---------------------------------------------------------------- from test_real_vocabularies

QWEN2_VL_SPECIAL_IDS = {
    "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
    "<|object_ref_start|>": 151646, "<|object_ref_end|>": 151647, "<|box_start|>": 151648, "<|box_end|>": 151649,
    "<|quad_start|>": 151650, "<|quad_end|>": 151651, "<|vision_start|>": 151652, "<|vision_end|>": 151653,
    "<|vision_pad|>": 151654, "<|image_pad|>": 151655, "<|video_pad|>": 151656,
}
