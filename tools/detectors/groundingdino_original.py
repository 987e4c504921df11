"""The original IDEA Grounding DINO checkpoints (``.pth``) through the ``groundingdino-py`` package.

``groundingdino_swint_ogc.pth`` and ``groundingdino_swinb_cogcoor.pth`` are the weights
the Grounding DINO paper released, before the transformers port. ``groundingdino-py``
pins ``supervision==0.6.0`` and needs ``transformers<5``, so it is an optional extra
(``pip install 'rex-agent[groundingdino]'``) and imported only when this backend is used.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import torch
from PIL import Image

from .. import boxes as box_ops
from ..checkpoints import resolve_checkpoint
from ..detections import Detections
from ..devices import resolve_device
from ..errors import CheckpointNotFoundError, UserInputError
from ..text import Span, check_text
from .base import caption_and_focus_tokens, check_focus_score, query_scores

INSTALL_HINT = "pip install 'rex-agent[groundingdino]'"
# The image normalisation and resize of groundingdino.util.inference.load_image.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _import_groundingdino():
    try:
        import groundingdino
    except ImportError as error:
        raise ImportError(f"the original Grounding DINO backend needs groundingdino-py: {INSTALL_HINT}") from error
    import transformers
    from packaging.version import Version

    # Its BERT wrapper calls BertModel.get_extended_attention_mask and the 4.x encoder
    # signature, both gone in transformers 5.
    if Version(transformers.__version__) >= Version("5"):
        raise ImportError(
            f"groundingdino-py needs transformers<5, found {transformers.__version__}: "
            f"use an environment made with {INSTALL_HINT}"
        )
    return groundingdino


class OriginalGroundingDinoDetector:
    """An IDEA ``GroundingDINO`` model built by ``groundingdino-py`` from its config file.

    Scoring matches ``GroundingDinoDetector``: without ``focus`` a query's score is its
    highest sigmoid probability over all text tokens (what the package's ``predict``
    reports); with ``focus`` the ``focus_score`` ("mean" or "max") over the focus span's
    tokens. ``detect`` returns every query's box (900 for the released models), best
    first, clipped to the image.
    """

    def __init__(self, model, *, image_size: int = 800, max_image_size: int = 1333, max_detections: int | None = None,
                 focus_score: str = "mean"):
        """``image_size``/``max_image_size``: the shorter/longer side the image is resized to."""
        _import_groundingdino()
        self.focus_score = check_focus_score(focus_score)
        from groundingdino.datasets import transforms

        self.model = model.eval()
        self.max_detections = max_detections
        # The model cuts longer captions to this many tokens itself (no [SEP] re-added).
        self.max_text_len = int(model.max_text_len)
        self.transform = transforms.Compose(
            [
                transforms.RandomResize([image_size], max_size=max_image_size),  # one size: deterministic
                transforms.ToTensor(),
                transforms.Normalize(_IMAGENET_MEAN, _IMAGENET_STD),
            ]
        )

    @classmethod
    def from_pretrained(
        cls,
        checkpoint_path: str | os.PathLike,
        config_path: str | os.PathLike | None = None,
        *,
        text_encoder: str | os.PathLike = "bert-base-uncased",
        device: str | torch.device = "auto",
        image_size: int = 800,
        max_image_size: int = 1333,
        max_detections: int | None = None,
        focus_score: str = "mean",
    ) -> "OriginalGroundingDinoDetector":
        """Load a ``.pth`` checkpoint with its config (default: the package's SwinT OGC one).

        ``groundingdino_swinb_cogcoor.pth`` needs ``config_path`` set to the package's
        ``groundingdino/config/GroundingDINO_SwinB_cfg.py``. ``text_encoder`` is the BERT
        the model is built around, a Hub id or a local folder; the checkpoint then
        overwrites its weights. Weights stay float32 on every device.
        """
        checkpoint = Path(checkpoint_path).expanduser()
        if not checkpoint.is_file():
            raise CheckpointNotFoundError(f"Grounding DINO checkpoint {os.fspath(checkpoint_path)!r}: no such file")
        groundingdino = _import_groundingdino()
        from groundingdino.models import build_model
        from groundingdino.util.misc import clean_state_dict
        from groundingdino.util.slconfig import SLConfig

        if config_path is None:
            config_path = Path(groundingdino.__file__).parent / "config" / "GroundingDINO_SwinT_OGC.py"
        if not Path(config_path).is_file():
            raise CheckpointNotFoundError(f"Grounding DINO config {os.fspath(config_path)!r}: no such file")
        config = SLConfig.fromfile(os.fspath(config_path))
        config.text_encoder_type = resolve_checkpoint(text_encoder, hint="or pass text_encoder=PATH to a BERT folder")
        # Gradient checkpointing only matters for training; under inference it just warns.
        config.use_checkpoint = config.use_transformer_ckpt = False
        # The package prints the text encoder path to stdout, where the CLI writes its JSON.
        with contextlib.redirect_stdout(io.StringIO()):
            model = build_model(config)
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        state = clean_state_dict(state.get("model", state))  # IDEA files wrap the weights in "model"
        try:
            missing, _ = model.load_state_dict(state, strict=False)
        except RuntimeError as error:  # tensor shapes that differ: another architecture
            raise UserInputError(
                f"checkpoint {checkpoint.name} does not fit config {Path(config_path).name}; "
                "pass the config it was trained with (GroundingDINO_SwinB_cfg.py for the SwinB checkpoint)"
            ) from error
        if missing:
            warnings.warn(
                f"{len(missing)} weights missing from {checkpoint.name} stay random, e.g. {missing[:3]}", stacklevel=2
            )
        model.to(resolve_device(device))
        return cls(model, image_size=image_size, max_image_size=max_image_size, max_detections=max_detections,
                   focus_score=focus_score)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def detect(self, image: Image.Image, text: str, focus: Span | None = None) -> Detections:
        """Boxes for ``text`` on ``image``, best first (see the class docstring for scoring)."""
        check_text(text, focus)
        caption, score_tokens = caption_and_focus_tokens(text, focus, self.model.tokenizer, self.max_text_len)
        pixels, _ = self.transform(image, None)
        with torch.inference_mode():
            outputs = self.model(pixels[None].to(self.device), captions=[caption])
        probs = outputs["pred_logits"][0].float().sigmoid().cpu()
        xyxy = box_ops.scale_boxes(box_ops.cxcywh_to_xyxy(outputs["pred_boxes"][0]), image.width, image.height)
        xyxy = box_ops.clip_boxes(xyxy, image.width, image.height)
        detections = Detections(xyxy, query_scores(probs, score_tokens, self.focus_score).numpy()).sorted()
        return detections if self.max_detections is None else detections[: self.max_detections]
