"""Errors raised on bad input: each names the file and the problem."""

from __future__ import annotations

from os import PathLike


class InputError(ValueError):
    """A user's input file is unusable; the message names the file and what is wrong with it."""

    def __init__(self, path: str | PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class MissingInputError(InputError, FileNotFoundError):
    """A file the input layout requires does not exist."""

    def __init__(self, path: str | PathLike[str], what: str = "required file") -> None:
        super().__init__(path, f"{what} not found")
