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
from folders.auditing import event_for
from folders.documents import DocumentInfo, VersionInfo
from folders.errors import Forbidden, NotFound
from folders.models import Document, DocumentVersion
from folders.policy import Permission, Resource, decide


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
        if not decide(actor, Permission.LIST_FOLDER, Resource(), self._clock()).allowed:
            raise Forbidden()
        with Session(self._engine) as session:
            document = session.get(Document, document_id)
            if document is None:
                raise NotFound("No such document.")
            versions = session.scalars(
                select(DocumentVersion)
                .where(DocumentVersion.document_id == document_id)
                .order_by(DocumentVersion.number.desc())
            ).all()
            info = DocumentInfo(
                id=document.id,
                student_id=document.student_id,
                category=document.category,
                title=document.title,
                school_year=document.school_year,
                effective_date=document.effective_date,
                created_at=document.created_at,
                versions=tuple(
                    VersionInfo(
                        id=v.id,
                        number=v.number,
                        size=v.size,
                        sha256=v.plaintext_sha256,
                        mime_type=v.mime_type,
                        page_count=v.page_count,
                        filename=v.original_filename,
                        uploaded_at=v.uploaded_at,
                        uploaded_by=v.uploaded_by,
                        shredded=v.wrapped_dek is None,
                    )
                    for v in versions
                ),
            )
        self._audit.record(
            event_for(
                actor, Action.DOCUMENT_METADATA, student_id=info.student_id, document_id=info.id
            )
        )
        return info
