"""fewstep: distill, export, serve and measure few-step image generators."""

import logging as _logging

__version__ = "0.1.0"


def _quiet_torchao_cuda_libraries(record: _logging.LogRecord) -> bool:
    """torchao (brought by the edge extra, imported by peft and so by every diffusers UNet forward) warns at import
    that its CUDA-only kernel libraries do not load on a CPU build: harmless here, and two lines on every command."""
    return not (record.getMessage().startswith("Failed to load ") and ".so" in record.getMessage())


_logging.getLogger("torchao").addFilter(_quiet_torchao_cuda_libraries)
