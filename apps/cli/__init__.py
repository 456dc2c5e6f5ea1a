"""The command line (``queue-contrast``) and the one module that names both backends
(``apps.cli.chooser``)."""

from apps.cli.main import main

__all__ = ["main"]
