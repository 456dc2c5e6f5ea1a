"""The command line (``queue-contrast``) and the one module that names both backends
(``pipeline.cli.chooser``)."""

from pipeline.cli.main import main

__all__ = ["main"]
