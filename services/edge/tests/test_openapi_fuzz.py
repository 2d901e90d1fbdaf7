"""schemathesis against the live edge: every operation, a bounded number of generated
requests each (webhook bodies included), sent over HTTP to the app served by uvicorn.

Checked for every response: no 5xx but the documented 503s, the status code is documented,
the body matches its documented schema and content type (schemathesis' default checks).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
import schemathesis
from schemathesis.checks import positive_data_acceptance

from libs.common.settings import Settings
from services.api.tests.support import fuzz_settings, live_server
from services.edge.app import create_app

# The edge has few operations: more examples each, still a few seconds in all.
EXAMPLES_PER_OPERATION = 60

schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())
schema.config.generation.update(allow_extra_parameters=False)


@pytest.fixture(scope="module")
def live_edge(settings: Settings) -> Iterator[tuple[str, requests.Session]]:
    # Unsigned posts accepted, so that generated webhook bodies reach the parser.
    app = create_app(settings.model_copy(update={"allow_unsigned_webhooks": True}))
    with live_server(app, "the edge") as base_url, requests.Session() as session:
        yield base_url, session


@schema.parametrize()
@fuzz_settings(EXAMPLES_PER_OPERATION)
def test_edge_conforms_to_its_openapi(
    case: schemathesis.Case, live_edge: tuple[str, requests.Session]
) -> None:
    base_url, session = live_edge
    case.call_and_validate(
        base_url=base_url,
        session=session,
        # A token that is well-formed text is still forged (404), by design.
        excluded_checks=[positive_data_acceptance],
    )
