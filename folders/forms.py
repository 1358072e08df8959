"""Upload forms that store their files once, however often they are sent.

Each upload page carries a fresh random form id. The request that sends it first claims
the id in the database every worker shares, before storing anything; the same form sent
again (a reload of the results page, the browser's history, a second click while the
first request is on its way, in any worker) finds the id claimed and stores nothing.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from folders.actor import Actor
from folders.errors import Forbidden, InvalidInput
from folders.models import UploadForm

CLAIMS_KEPT = timedelta(days=7)
_FORM_ID = re.compile(r"[0-9a-f]{32}")


def new_form_id() -> str:
    """A fresh random form id (128 bits, lower-case hex) for one upload form."""
    return secrets.token_hex(16)


class UploadForms:
    """Claims on upload form ids. Claims older than :data:`CLAIMS_KEPT` are forgotten."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime]) -> None:
        self._engine = engine
        self._clock = clock

    def claim(self, actor: Actor, form_id: str) -> bool:
        """Claim ``form_id`` for ``actor`` before its files are stored: True the first
        time, False when it was claimed already (by this request's twin, or anyone).

        Raises InvalidInput for an id that is not one :func:`new_form_id` makes,
        Forbidden for the operator (forms are a signed-in user's), and the database's
        errors (nothing is claimed then).
        """
        if not _FORM_ID.fullmatch(form_id):
            raise InvalidInput("This upload form is damaged: open the upload page again.")
        if actor.user_id is None:
            raise Forbidden("Upload forms are sent by a signed-in account.")
        now = self._clock()
        try:
            with Session(self._engine) as session, session.begin():
                session.execute(delete(UploadForm).where(UploadForm.sent_at < now - CLAIMS_KEPT))
                session.add(UploadForm(form_id=form_id, user_id=actor.user_id, sent_at=now))
        except IntegrityError:
            return False
        return True

    def release(self, actor: Actor, form_id: str) -> None:
        """Give back ``actor``'s claim on ``form_id``: a form that stored nothing may be
        sent again. Another account's claim is left alone. Raises the database's errors."""
        with Session(self._engine) as session, session.begin():
            session.execute(
                delete(UploadForm).where(
                    UploadForm.form_id == form_id, UploadForm.user_id == actor.user_id
                )
            )
