"""The error raised for a bad data row."""

from __future__ import annotations

from longdraft.errors import UserError

# Reason kinds, used as keys of DataReport.skipped.
BAD_JSON = "bad_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
BAD_FIELD_TYPE = "bad_field_type"
UNKNOWN_ROLE = "unknown_role"
EMPTY_CONVERSATION = "empty_conversation"
TEMPLATE_MISMATCH = "template_mismatch"
UNSUPPORTED_CONTENT = "unsupported_content"
EMPTY_AFTER_TOKENIZATION = "empty_after_tokenization"


class DataError(UserError, ValueError):
    """A bad row: `location` is "file:line", `kind` one of the reason kinds above."""

    def __init__(self, kind: str, reason: str, location: str | None = None) -> None:
        self.kind = kind
        self.reason = reason
        self.location = location
        super().__init__(f"{location}: {reason}" if location else reason)

    def __reduce__(self):
        # Pickled by its own fields: a controller actor's bad row reaches the driver through Ray,
        # which cannot rebuild an exception from the message alone.
        return DataError, (self.kind, self.reason, self.location)

    def at(self, location: str) -> DataError:
        """The same error, attributed to a row."""
        return DataError(self.kind, self.reason, location)
