"""One document's description (metadata and every version) for staff, audited."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from audit.events import Action
from audit.log import AuditLog
from folders.actor import Actor
from folders.auditing import event_for, require
from folders.documents import DocumentInfo, document_info
from folders.errors import NotFound
from folders.models import Document, DocumentVersion
from folders.policy import Permission


class Catalog:
    """Look a document up by id without listing its whole folder."""

    def __init__(self, engine: Engine, audit: AuditLog, clock: Callable[[], datetime]) -> None:
        self._engine = engine
        self._audit = audit
        self._clock = clock

    def describe(self, actor: Actor, document_id: uuid.UUID) -> DocumentInfo:
        """The document with all its versions, newest first; audited as a metadata view.

        Raises Forbidden (not staff who may list folders), NotFound, AuditUnavailable.
        """
        require(self._audit, actor, Permission.LIST_FOLDER, self._clock())
        with Session(self._engine) as session:
            document = session.get(Document, document_id)
            if document is None:
                raise NotFound("No such document.")
            versions = session.scalars(
                select(DocumentVersion)
                .where(DocumentVersion.document_id == document_id)
                .order_by(DocumentVersion.number.desc())
            ).all()
            info = document_info(document, list(versions))
        self._audit.record(
            event_for(
                actor, Action.DOCUMENT_METADATA, student_id=info.student_id, document_id=info.id
            )
        )
        return info
