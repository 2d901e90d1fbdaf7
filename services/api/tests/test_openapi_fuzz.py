"""schemathesis against the live API: every operation, a bounded number of generated
requests each, sent over HTTP with an admin key to the app served by uvicorn.

Checked for every response: no 5xx, the status code is documented, the body matches its
documented schema and content type (schemathesis' default checks).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
import schemathesis
from schemathesis.checks import positive_data_acceptance

from libs.common.settings import Settings
from services.api.app import create_app
from services.api.tests.support import fuzz_settings, live_server

# Per operation (~45 operations), plus schemathesis' coverage cases; ~30 s in all here.
EXAMPLES_PER_OPERATION = 25

# The schema as the app declares it (routes do not depend on settings); requests go to the
# live server below.
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())
# Query parameters the API does not know are ignored, as HTTP APIs commonly do (bodies, by
# contrast, refuse unknown fields): do not count them as invalid requests.
schema.config.generation.update(allow_extra_parameters=False)


class LiveApi:
    def __init__(self, base_url: str, admin_key: str) -> None:
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {admin_key}"}
        self.session = requests.Session()


@pytest.fixture(scope="module")
def live_api(api_settings: Settings) -> Iterator[LiveApi]:
    # Generated requests include many without a key: do not let them lock the client out.
    app = create_app(api_settings, auth_failures_per_minute=1_000_000)
    with live_server(app, "the API") as base_url:
        live = LiveApi(base_url, api_settings.bootstrap_api_key)
        yield live
        live.session.close()


@schema.parametrize()
@fuzz_settings(EXAMPLES_PER_OPERATION)
def test_api_conforms_to_its_openapi(case: schemathesis.Case, live_api: LiveApi) -> None:
    case.call_and_validate(
        base_url=live_api.base_url,
        session=live_api.session,
        headers=live_api.headers,
        # "Schema-valid data must be accepted" does not hold for this API by design: a
        # syntactically valid cursor, address, time zone or template can still be wrong
        # (422 with the field), and ids generated at random name nothing (404).
        excluded_checks=[positive_data_acceptance],
    )
