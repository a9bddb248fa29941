"""fewstep: distill, export, serve and measure few-step image generators."""

__version__ = "0.1.0"
