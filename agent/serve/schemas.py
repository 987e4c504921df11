"""The API's response bodies, as the OpenAPI document describes them."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, Field

Box = tuple[float, float, float, float]


class SelectionModel(BaseModel):
    """The CRS multiple-choice answer: one probability per option, "None" last when offered."""

    letters: list[str]
    probabilities: list[float]
    letter: Optional[str]
    index: Optional[int] = Field(description="The chosen candidate; null when None won.")
    allow_none: bool
    option_mass: Optional[float] = Field(
        None, description="Total next-token probability of the option letters (low: the model wanted other words).")
    letter_logprobs: Optional[list[Optional[float]]] = Field(
        None, description="Each option letter's full-vocabulary log-probability, as the authors' scripts record it.")
    orders: int = Field(1, description="Cyclic option orders averaged (crs_permutations).")
    disagreement: Optional[float] = Field(
        None, description="Share of the orders whose own pick differs from the averaged one.")
    text: Optional[str] = Field(
        None, description="The answer as generated (reference profile): the chosen option is the one it names.")
    read_letter: Optional[str] = Field(None, description="The letter the generated text names, as the authors' "
                                                         "evaluators read it; null when it names none.")
    first_token_logprob: Optional[float] = Field(
        None, description="The generated answer's first token's log-probability (the scripts' answer_prob_norm).")


class ScoredBoxes(BaseModel):
    boxes: list[Box]
    scores: list[float]


class LocateResult(BaseModel):
    """``Result.to_dict()``: the boxes and how the agent found them."""

    expression: str
    image_size: tuple[int, int] = Field(description="Width and height in pixels, after EXIF rotation.")
    strategy: str
    boxes: list[Box] = Field(description="[x1, y1, x2, y2] pixels, best first; empty: no target.")
    scores: list[float] = Field(description="One confidence per box.")
    level: Optional[int] = Field(description="SFA difficulty level (1 or 2); null when the strategy does not route.")
    path: Optional[str] = Field(description="The path that answered: specialist, mllm or crs.")
    target: Optional[str] = Field(description="The extracted target phrase.")
    target_span: Optional[tuple[int, int]]
    target_source: Optional[str]
    selection: Optional[SelectionModel]
    expected_count: Optional[int | str] = Field(None, description='How many objects the expression names: 1, n or "many".')
    count_source: Optional[str] = Field(
        None, description="The text's model (the extraction call) or heuristic (the words), or image (the MLLM's count).")
    count_probabilities: Optional[list[float]] = Field(
        None, description="count_mode image/both: the MLLM's probability of 0, 1, 2, 3, 4, 5 and more targets.")
    decision_threshold: float = Field(0.0, description="The score the boxes had to reach (0: returned without one).")
    candidates: Optional[ScoredBoxes] = Field(None, description="The CRS candidates, in option order.")
    proposals: Optional[ScoredBoxes] = Field(
        None, description="The detector's first ten boxes for the expression, before CRS's top-k and NMS.")
    verification: Optional[list[float]] = Field(None, description="crs_mode verify: p(yes) per candidate.")
    path_answer: Optional[ScoredBoxes] = Field(
        None, description="The answering path's boxes before the finishing policy (for calibration).")
    trace: list[str] = Field(description="The graph nodes visited, in order.")
    timings: dict[str, float] = Field(description="Seconds per step; queue: waiting for the device.")
    fallbacks: list[str] = Field(description="Every documented fallback taken.")


class DeviceStatus(BaseModel):
    device: str
    running: int
    waiting: int
    served: int
    running_for_s: Optional[float] = Field(None, description="Seconds the running query has taken so far.")
    stuck: bool = Field(False, description="The running query has outlasted the request timeout.")


class Health(BaseModel):
    status: str = Field(description='"ok", or "stuck" (with status 503) when a device is stuck on a query.')
    version: str
    strategies: list[str] = Field(description="The strategies a request may ask for.")
    defaults: dict[str, str | bool] = Field(
        description="strategy, focus, allow_none, multi and count_mode when a request omits them.")
    image_urls: bool = Field(description="Whether image_url is fetched.")
    api_key_required: bool
    max_upload_bytes: int
    devices: list[DeviceStatus]


class ErrorBody(BaseModel):
    detail: str


class InternalErrorBody(BaseModel):
    detail: str = Field(description='"internal error"; the details are in the server log under request_id.')
    request_id: str


ERROR_RESPONSES = {
    400: {"model": ErrorBody, "description": "A bad image, expression or image URL; the reason in detail."},
    401: {"model": ErrorBody, "description": "Missing or wrong API key (only when the server has one)."},
    403: {"model": ErrorBody, "description": "Posted from a web page of another origin (see --cors-origin)."},
    408: {"model": ErrorBody, "description": "The request body did not arrive within the body timeout."},
    413: {"model": ErrorBody, "description": "The upload or fetched image is over the size limit."},
    502: {"model": ErrorBody, "description": "The remote model server failed."},
    500: {"model": InternalErrorBody, "description": "An internal error; quote request_id to the operator."},
    503: {"model": ErrorBody, "description": "Every device queue is full; retry after Retry-After seconds."},
    504: {"model": ErrorBody, "description": "No answer within the server's request timeout."},
}
