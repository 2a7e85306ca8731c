"""Errors raised on bad input: each names the file (or the option) and the problem.

Every user-facing fault is a :class:`BitroError`; ``bitro <verb>`` prints it as one line,
``bitro <verb>: error: <file>: <problem>``, and exits with status 2. Anything else is a bug and keeps its
traceback (a ``ValueError`` or ``TypeError`` is a caller passing the library a wrong argument).

- :class:`InputError`: an input file is unusable (:class:`MissingInputError`: it is not there;
  :class:`PixelSizeError`: a slide without a pixel size; :class:`WeightsError`: weights that are
  missing, truncated or do not fit).
- :class:`ConfigError`: a setting asks for something the data cannot give (:class:`PatientOverlapError`:
  pretraining samples that share patients with the target's test samples).
- :class:`UsageError`: the command line names something that does not exist or lacks an option
  (:class:`TileSettingsError`: tile-token mode cannot run as asked).
- :class:`BundleError`: a model bundle is incomplete, tampered with, or not a bundle (an :class:`InputError`).
- :class:`BundleMismatchError`: a bundle and the data it is applied to were made with different settings.
"""

from __future__ import annotations

from os import PathLike


class BitroError(Exception):
    """A fault of the user's input, config or command line; the message names the file and the problem.

    Attributes
    ----------
    path
        The file (or command-line option, or config key) at fault.
    problem
        What is wrong with it, and where possible what to do about it.
    """

    def __init__(self, path: str | PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class InputError(BitroError):
    """A user's input file is unusable; the message names the file and what is wrong with it."""


class MissingInputError(InputError):
    """A file the input layout requires does not exist."""

    def __init__(self, path: str | PathLike[str], what: str = "required file") -> None:
        super().__init__(path, f"{what} not found")


class PixelSizeError(InputError):
    """A slide records no pixel size (µm/px) and none was given."""


class ConfigError(BitroError):
    """The config, a sample sheet's contents or a setting asks for something the data cannot give."""


class PatientOverlapError(ConfigError):
    """A pretraining sample is, or shares a patient with, a test sample of the target.

    Raised where the sample sheets are not known by name (``path`` says what was compared); the
    command that read them re-raises it naming the sheet.
    """

    def __init__(self, problem: str, path: str | PathLike[str] = "the sample sheets") -> None:
        super().__init__(path, problem)


class WeightsError(InputError):
    """A weights file is missing, truncated, or does not fit the architecture."""


class UsageError(BitroError):
    """The command line names something that does not exist (a fold, a mode) or lacks an option."""


class TileSettingsError(UsageError):
    """Tile-token mode cannot run as asked: an encoder without tokens, or tiles that misfit its tokens.

    ``path`` names the setting at fault: the option on the command line, the key in the config.
    """


class BundleError(InputError):
    """A model bundle (``bitro export-model``) is not a bundle, lacks a file, or a file's sha256 differs from
    the one ``bundle.json`` records; ``path`` names the file at fault."""


class BundleMismatchError(BitroError):
    """A bundle is applied to data made with other settings (encoder, its weights, crops, genes).

    ``path`` names the data's file (e.g. the sample's ``embeddings.json``); the problem names the setting,
    the bundle's value and the data's.
    """
