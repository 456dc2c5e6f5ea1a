"""``python -m pipeline.cli``: the same as the ``queue-contrast`` console script."""

from pipeline.cli.main import main

main()
