"""The exceptions that mean 'bad input': the CLI prints them as one line and exits 2."""

from __future__ import annotations

from .config import ConfigError
from .models.checkpoint import CheckpointError
from .models.datasets.imagefolder import ImageFolderError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    CheckpointError,
    ImageFolderError,
    ValueError,
    FileNotFoundError,
    FileExistsError,
)
