"""Errors that are the user's to fix (config, data, files): the CLI prints them as one line."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user gave us; the message alone says where and what was expected."""
