from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from folders.accounts import Accounts
from folders.actor import Actor
from folders.errors import AuthenticationFailed, Conflict, Forbidden, InvalidInput, NotFound
from folders.models import Role, User
from folders.runtime import Runtime

NOW = datetime(2026, 9, 1, 8, 0, tzinfo=UTC)
OPERATOR = Actor.operator()
PASSWORD = "a long enough passphrase"


@pytest.fixture
def accounts(runtime: Runtime) -> Accounts:
    return runtime.accounts


@pytest.fixture
def engine(runtime: Runtime) -> Engine:
    return runtime.engine


def test_add_user_stores_an_argon2id_hash(accounts: Accounts, engine: Engine) -> None:
    info = accounts.add_user(
        OPERATOR, "  Registrar@School.EXAMPLE ", Role.REGISTRAR, password=PASSWORD
    )
    assert info.email == "registrar@school.example"
    assert info.role is Role.REGISTRAR and info.active and info.has_password
    with Session(engine) as session:
        stored = session.scalars(select(User.password_hash)).one()
    assert stored is not None and stored.startswith("$argon2id$")
    assert PASSWORD not in stored


def test_duplicate_email_is_a_conflict(accounts: Accounts) -> None:
    accounts.add_user(OPERATOR, "a@school.example", Role.GUARDIAN)
    with pytest.raises(Conflict, match="already exists"):
        accounts.add_user(OPERATOR, "A@school.example", Role.ADMIN)


@pytest.mark.parametrize(
    ("email", "message"),
    [
        ("", "Enter an email address."),
        ("  ", "Enter an email address."),
        ("not-an-email", "Not a valid email address: 'not-an-email'."),
        ("two@@example.org", "Not a valid email address: 'two@@example.org'."),
        ("a b@example.org", "Not a valid email address: 'a b@example.org'."),
    ],
)
def test_malformed_email_is_rejected(accounts: Accounts, email: str, message: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        accounts.add_user(OPERATOR, email, Role.GUARDIAN)
    assert refused.value.public_message == message


def test_short_password_is_rejected(accounts: Accounts) -> None:
    with pytest.raises(InvalidInput, match="at least 12"):
        accounts.add_user(OPERATOR, "a@school.example", Role.GUARDIAN, password="short")


def test_authenticate(accounts: Accounts) -> None:
    accounts.add_user(OPERATOR, "g@home.example", Role.GUARDIAN, password=PASSWORD)
    assert accounts.authenticate("G@home.example", PASSWORD).last_login_at is not None
    with pytest.raises(AuthenticationFailed):
        accounts.authenticate("g@home.example", PASSWORD + "!")
    with pytest.raises(AuthenticationFailed):
        accounts.authenticate("nobody@home.example", PASSWORD)


def test_user_without_password_cannot_log_in(accounts: Accounts) -> None:
    accounts.add_user(OPERATOR, "new@home.example", Role.GUARDIAN)
    with pytest.raises(AuthenticationFailed):
        accounts.authenticate("new@home.example", "")


def test_disabled_user_cannot_log_in(accounts: Accounts) -> None:
    accounts.add_user(OPERATOR, "g@home.example", Role.GUARDIAN, password=PASSWORD)
    assert accounts.disable(OPERATOR, "g@home.example").active is False
    with pytest.raises(AuthenticationFailed):
        accounts.authenticate("g@home.example", PASSWORD)


def test_set_password(accounts: Accounts) -> None:
    accounts.add_user(OPERATOR, "g@home.example", Role.GUARDIAN)
    accounts.set_password(OPERATOR, "g@home.example", PASSWORD)
    assert accounts.authenticate("g@home.example", PASSWORD).email == "g@home.example"
    with pytest.raises(NotFound):
        accounts.set_password(OPERATOR, "missing@home.example", PASSWORD)


def test_only_admins_manage_accounts(accounts: Accounts) -> None:
    registrar = accounts.add_user(OPERATOR, "r@school.example", Role.REGISTRAR)
    actor = Actor(user_id=registrar.id, role=Role.REGISTRAR, email=registrar.email)
    with pytest.raises(Forbidden):
        accounts.add_user(actor, "x@school.example", Role.ADMIN)
    admin = accounts.add_user(OPERATOR, "admin@school.example", Role.ADMIN)
    admin_actor = Actor(user_id=admin.id, role=Role.ADMIN, email=admin.email)
    accounts.add_user(admin_actor, "x@school.example", Role.COMPLIANCE)
    listed = accounts.list_users(admin_actor, Role.COMPLIANCE)
    assert [u.email for u in listed] == ["x@school.example"]
    with pytest.raises(Forbidden):
        accounts.find_users(actor, "school")
    found = accounts.find_users(admin_actor, "x@")
    assert [u.email for u in found.items] == ["x@school.example"] and found.total == 1


def test_account_changes_are_audited(accounts: Accounts, runtime: Runtime) -> None:
    accounts.add_user(OPERATOR, "g@home.example", Role.GUARDIAN)
    accounts.set_password(OPERATOR, "g@home.example", PASSWORD)
    accounts.disable(OPERATOR, "g@home.example")
    events = [e.event for e in reversed(runtime.audit_log.query(per_page=3).items)]
    assert [e.action.value for e in events] == ["user.create", "user.update", "user.disable"]
    assert all(e.actor_role == "operator" and "g@home.example" in (e.detail or "") for e in events)
