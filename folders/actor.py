"""Who is acting: passed explicitly, first, to every service call."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from folders.models import Role


@dataclass(frozen=True)
class RequestContext:
    """Where a request came from, recorded with every audit event."""

    request_id: str | None = None
    client_address: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True)
class Actor:
    """A signed-in user, or the operator at the command line (``user_id`` None)."""

    user_id: uuid.UUID | None
    role: Role | None
    email: str
    context: RequestContext = RequestContext()

    @classmethod
    def operator(cls, name: str = "cli") -> Actor:
        """The person running ``satchel`` on the server: trusted as an administrator."""
        return cls(user_id=None, role=None, email=f"operator:{name}")

    @property
    def is_operator(self) -> bool:
        return self.user_id is None
