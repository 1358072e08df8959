"""Upload form claims: a form's id is claimed once, in the database every worker shares."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from folders.actor import Actor
from folders.errors import Forbidden, InvalidInput
from folders.forms import CLAIMS_KEPT, new_form_id
from folders.runtime import Runtime
from tests.support.people import Cast
from tests.web import helpers
from tests.web.helpers import Clock

# This module's fixtures: a clock the test moves, and cheap Argon2id.
clock = helpers.clock
runtime = helpers.runtime


def test_a_form_is_claimed_once_until_given_back(runtime: Runtime, cast: Cast) -> None:
    forms = runtime.upload_forms
    form_id = new_form_id()
    assert forms.claim(cast.registrar, form_id)
    assert not forms.claim(cast.registrar, form_id)
    assert not forms.claim(cast.admin, form_id)  # whoever sends it
    forms.release(cast.admin, form_id)  # not theirs: nothing is given back
    assert not forms.claim(cast.registrar, form_id)
    forms.release(cast.registrar, form_id)
    assert forms.claim(cast.registrar, form_id)
    assert forms.claim(cast.registrar, new_form_id())  # another form


def test_claims_are_forgotten_after_a_week(runtime: Runtime, cast: Cast, clock: Clock) -> None:
    forms = runtime.upload_forms
    old, recent = new_form_id(), new_form_id()
    assert forms.claim(cast.registrar, old)
    clock.advance(CLAIMS_KEPT - timedelta(hours=1))
    assert forms.claim(cast.registrar, recent)
    clock.advance(timedelta(hours=2))
    assert not forms.claim(cast.registrar, recent)
    assert forms.claim(cast.registrar, old)  # a week old: forgotten


@pytest.mark.parametrize("form_id", ["", "x" * 32, "ABCDEF" + "0" * 26, "0" * 31, "0" * 33])
def test_a_malformed_form_id_is_refused(runtime: Runtime, cast: Cast, form_id: str) -> None:
    with pytest.raises(InvalidInput, match="open the upload page again"):
        runtime.upload_forms.claim(cast.registrar, form_id)


def test_forms_are_a_signed_in_accounts(runtime: Runtime) -> None:
    with pytest.raises(Forbidden):
        runtime.upload_forms.claim(Actor.operator(), new_form_id())


def _claim_at_once(runtime: Runtime, actor: Actor, form_id: str, twins: int) -> list[bool]:
    """What each of ``twins`` threads, started together, gets from claiming ``form_id``."""
    start = threading.Barrier(twins)
    results: list[bool] = []

    def send() -> None:
        start.wait()
        results.append(runtime.upload_forms.claim(actor, form_id))

    threads = [threading.Thread(target=send) for _ in range(twins)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_of_twins_sent_at_once_exactly_one_claims(runtime: Runtime, cast: Cast) -> None:
    for _ in range(5):
        results = _claim_at_once(runtime, cast.registrar, new_form_id(), twins=4)
        assert sorted(results) == [False, False, False, True]
