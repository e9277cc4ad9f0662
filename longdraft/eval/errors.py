"""The evaluation's inputs that do not fit each other (data, draft, target, lengths): the user's to fix."""

from __future__ import annotations

from longdraft.errors import UserError


class EvalInputError(UserError, ValueError):
    """Printed as one line by the CLI; a ``ValueError`` too, for callers that catch bad values."""
