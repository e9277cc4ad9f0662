"""Checks of what a user passes on the command line (paths, numbers, devices), each failing with a
one-line ``UserError`` that names the argument, the value and what was expected.

Commands run them before loading anything, so a typo costs no model start-up.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from longdraft.errors import UserError


def existing_dir(path: str | Path, what: str, needs: Sequence[str] = (), hint: str = "") -> Path:
    """``path`` is a directory holding every file of ``needs``; ``what`` names the argument."""
    p = Path(path)
    hint = f" ({hint})" if hint else ""
    if not p.exists():
        raise UserError(f"{what} {p} does not exist; expected a directory{hint}")
    if not p.is_dir():
        raise UserError(f"{what} {p} is a file; expected a directory{hint}")
    missing = [name for name in needs if not (p / name).is_file()]
    if missing:
        raise UserError(f"{what} {p} has no {', '.join(missing)}{hint}")
    return p


def existing_file(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} {p} does not exist; expected a file")
    if not p.is_file():
        raise UserError(f"{what} {p} is a directory; expected a file")
    return p


def _no_file_above(p: Path, what: str) -> None:
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{what} {p}: {parent} is a file, so nothing can be written below it")
            return


def output_dir(path: str | Path, what: str) -> Path:
    """A directory to write into: absent (it will be created) or a directory, never a file."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {p} is a file; expected a directory to write into (or a new path)")
    _no_file_above(p, what)
    return p


def output_file(path: str | Path, what: str) -> Path:
    """A file to write: not a directory, and no file where a parent directory must be."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{what} {p} is a directory; expected a file name")
    _no_file_above(p, what)
    return p


def device_name(text: str, what: str = "--device") -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``, refused now when it does not exist here."""
    import torch

    if text == "auto":
        return text
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UserError(f"{what}={text!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise UserError(f"{what}={text!r}: this machine has no CUDA device (torch sees none); use cpu or auto")
        if device.index is not None and device.index >= count:
            raise UserError(f"{what}={text!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif device.type != "cpu":
        raise UserError(f"{what}={text!r}: expected auto, cpu, cuda or cuda:N")
    return text


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``minimum`` (argparse adds the option's name)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a whole number; expected an integer >= {minimum}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value}: expected an integer >= {minimum}")
        return value

    return parse


def number_at_least(minimum: float, note: str = "") -> Callable[[str], float]:
    """An argparse ``type``: a number >= ``minimum``."""
    note = f" ({note})" if note else ""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a number; expected a number >= {minimum}{note}"
            ) from None
        if not value >= minimum:  # also refuses nan
            raise argparse.ArgumentTypeError(f"{text}: expected a number >= {minimum}{note}")
        return value

    return parse


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose mistakes are ``UserError``s: one line, printed like every other."""

    def error(self, message: str):
        raise UserError(f"{message} (see `{self.prog} --help`)")
