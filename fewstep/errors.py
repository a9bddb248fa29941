"""The exceptions that mean 'bad input': the CLI prints them as one line and exits 2."""

from __future__ import annotations

from .compress.trainer import TrainingDivergedError
from .config import ConfigError
from .fsio import OutputWriteError
from .models.checkpoint import CheckpointError
from .models.datasets.imagefolder import ImageFolderError
from .runtime.engine import BackendUnavailable

# TrainingDivergedError is a RuntimeError with a message that says what to do; set FEWSTEP_DEBUG=1 for tracebacks.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    CheckpointError,
    ImageFolderError,
    ValueError,
    FileNotFoundError,
    FileExistsError,
    TrainingDivergedError,
    NotImplementedError,
    BackendUnavailable,
    OutputWriteError,  # full disk / permissions while writing an output; the previous file is intact
    ImportError,  # an optional dependency that is missing: our messages name the extra to install
)
