"""Schemathesis against the server's own OpenAPI document, on the tiny real checkpoints: no request
that the schema admits (or that breaks it) makes the server fail, and every answer keeps the contract
(status codes, content types and bodies as documented).

One check is always left out: positive_data_acceptance expects every schema-valid request to
succeed, but a schema cannot say "bytes that decode as an image" nor "an image file or an
image_url, one of them", so such requests are rightly answered 400 with the reason.

Random bytes are hardly ever an image, so half the /locate cases carry a real PNG instead of
the generated file and URL: those run the models, with generated expressions and options.

The schema needs the session's tiny checkpoints, so each operation's cases are drawn from its
Hypothesis strategy inside the test (schemathesis' lazy ``from_fixture`` does not run on pytest 9).
"""

import pytest
import schemathesis
from schemathesis.checks import negative_data_rejection, positive_data_acceptance
from schemathesis.transport.serialization import Binary
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import Agent, Configuration
from agent.serve import ServerOptions, create_app
from tests.helpers import png

EXAMPLES = 100  # per operation


@pytest.fixture(scope="module")
def api_schema(tiny_mm_grounding_dino, tiny_qwen2_vl):
    agent = Agent(config=Configuration(strategy="sfa+crs", llm="heuristic", detector=str(tiny_mm_grounding_dino),
                                       mllm=str(tiny_qwen2_vl), device="cpu"))
    # URL fetching stays off: generated host names must not send DNS queries out of this machine.
    app = create_app(agent, ServerOptions(max_upload_bytes=100_000))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_every_operation_keeps_its_contract(api_schema):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert sorted(f"{op.method.upper()} {op.path}" for op in operations) == ["GET /healthz", "POST /locate"]
    statuses = Counter()
    for operation in operations:

        @given(case=operation.as_strategy(), real_image=st.booleans())
        @settings(max_examples=EXAMPLES, suppress_health_check=list(HealthCheck), database=None)
        def keeps_contract(case, real_image):
            excluded = [positive_data_acceptance]
            if real_image and case.operation.path == "/locate" and isinstance(case.body, dict):
                case.body = {**{k: v for k, v in case.body.items() if k != "image_url"}, "image": Binary(png())}
                excluded.append(negative_data_rejection)  # an edited case is no longer judged as generated
            response = case.call_and_validate(excluded_checks=excluded)
            statuses[(case.operation.path, response.status_code)] += 1

        keeps_contract()
    assert statuses[("/locate", 200)] > 0 and statuses[("/healthz", 200)] > 0  # the models did answer
    assert not any(status >= 500 for _, status in statuses), statuses
