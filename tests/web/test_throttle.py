from __future__ import annotations

from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient

from audit.events import Action, Outcome
from folders.actor import RequestContext
from folders.errors import AuthenticationFailed
from folders.models import Role
from folders.runtime import Runtime
from folders.throttle import Logins, LoginThrottle, LoginThrottled, ThrottleLimits
from tests.support.people import Cast
from tests.web import helpers
from tests.web.helpers import CAST_PASSWORD, Clock, csrf, events
from web.app import create_app

# This module's fixtures: a clock the test moves, and cheap Argon2id (tests.web.helpers).
clock = helpers.clock
runtime = helpers.runtime


HOME = RequestContext(client_address="198.51.100.7")


def _logins(runtime: Runtime, clock: Clock, limits: ThrottleLimits | None = None) -> Logins:
    throttle = LoginThrottle(runtime.engine, clock, limits or ThrottleLimits())
    return Logins(runtime.accounts, throttle, runtime.audit_log)


def _attempt(client: FlaskClient, email: str, password: str, address: str) -> int:
    response = client.post(
        "/login",
        data={"email": email, "password": password, "csrf_token": csrf(client)},
        environ_base={"REMOTE_ADDR": address},
    )
    return response.status_code


def test_five_failures_lock_the_account_for_fifteen_minutes(
    runtime: Runtime, cast: Cast, clock: Clock
) -> None:
    logins = _logins(runtime, clock)
    for _ in range(5):
        with pytest.raises(AuthenticationFailed):
            logins.log_in(cast.parent.email, "wrong guess 1234", HOME)
        clock.advance(timedelta(minutes=1))
    # Even the right password is not checked now.
    with pytest.raises(LoginThrottled) as throttled:
        logins.log_in(cast.parent.email, CAST_PASSWORD, HOME)
    # The first failure (5 minutes ago) leaves the window in 10 minutes.
    assert throttled.value.retry_after == 10 * 60
    clock.advance(timedelta(minutes=10))
    assert logins.log_in(cast.parent.email, CAST_PASSWORD, HOME).email == cast.parent.email

    failed = events(runtime, Action.LOGIN_FAILED)
    assert len(failed) == 5 and all(e.event.outcome is Outcome.DENIED for e in failed)
    assert failed[0].event.actor_role == "anonymous"
    assert failed[0].event.client_address == "198.51.100.7"
    [locked] = events(runtime, Action.LOGIN_THROTTLED)
    assert locked.event.actor_email == cast.parent.email
    assert events(runtime, Action.LOGIN)[0].event.actor_id == str(cast.parent.user_id)


def test_a_success_restarts_the_account_count_but_not_the_address_count(
    runtime: Runtime, cast: Cast, clock: Clock
) -> None:
    logins = _logins(runtime, clock, ThrottleLimits(per_account=3, per_address=6))
    wrong = "wrong guess 1234"
    for _ in range(2):
        with pytest.raises(AuthenticationFailed):
            logins.log_in(cast.parent.email, wrong, HOME)
    logins.log_in(cast.parent.email, CAST_PASSWORD, HOME)
    for _ in range(3):  # three more failures are allowed after the success
        with pytest.raises(AuthenticationFailed):
            logins.log_in(cast.parent.email, wrong, HOME)
    with pytest.raises(LoginThrottled):
        logins.log_in(cast.parent.email, CAST_PASSWORD, HOME)
    # Five failures from this address so far (the success did not clear them); one more
    # fills its quota of six, for every account.
    with pytest.raises(AuthenticationFailed):
        logins.log_in(cast.other_parent.email, wrong, HOME)
    with pytest.raises(LoginThrottled):
        logins.log_in(cast.registrar.email, CAST_PASSWORD, HOME)
    elsewhere = RequestContext(client_address="203.0.113.9")
    assert logins.log_in(cast.registrar.email, CAST_PASSWORD, elsewhere).role is Role.REGISTRAR


def test_twenty_failures_from_one_address_give_429_across_accounts_and_workers(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    # A second app on the same database stands for another gunicorn worker.
    other_worker = Runtime(runtime.settings, clock=runtime.clock)
    other_worker.accounts = runtime.accounts
    try:
        apps = [app, create_app(runtime=other_worker)]
        clients = [a.test_client() for a in apps]
        for n in range(20):
            status = _attempt(
                clients[n % 2], f"guess{n}@home.example", "wrong guess 1234", "192.0.2.50"
            )
            assert status == 401
        client = clients[0]
        response = client.post(
            "/login",
            data={
                "email": cast.parent.email,
                "password": CAST_PASSWORD,
                "csrf_token": csrf(client),
            },
            environ_base={"REMOTE_ADDR": "192.0.2.50"},
        )
        assert response.status_code == 429
        assert 0 < int(response.headers["Retry-After"]) <= 15 * 60
        assert 'role="alert"' in response.get_data(as_text=True)
        assert client.get("/guardian/").status_code == 302  # not logged in
        assert _attempt(clients[1], cast.parent.email, CAST_PASSWORD, "192.0.2.51") == 302
    finally:
        other_worker.close()


def test_five_failures_for_one_account_give_429_on_the_web(
    app: Flask, runtime: Runtime, cast: Cast
) -> None:
    client = app.test_client()
    for n in range(5):
        assert _attempt(client, cast.parent.email, "wrong guess 1234", f"192.0.2.{n}") == 401
    response = client.post(
        "/login",
        data={
            "email": cast.parent.email.upper(),
            "password": CAST_PASSWORD,
            "csrf_token": csrf(client),
        },
        environ_base={"REMOTE_ADDR": "192.0.2.99"},
    )
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) == 15 * 60  # the clock stood still
    assert "Too many failed logins" in response.get_data(as_text=True)
    assert _attempt(client, cast.other_parent.email, CAST_PASSWORD, "192.0.2.99") == 302
