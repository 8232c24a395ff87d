"""The errors the kit raises for bad input; the command line prints them without a traceback."""

from __future__ import annotations

from distill.configuration import ConfigError
from distill.conversation import DataError
from distill.launching import StageError
from distill.modeling import ModelFormatError
from distill.pairing import PairError

KNOWN_ERRORS = (
    ConfigError,
    DataError,
    ModelFormatError,
    PairError,
    StageError,
    FileExistsError,
    FileNotFoundError,
)
