"""``python -m apps.cli``: the same as the ``queue-contrast`` console script."""

from apps.cli.main import main

main()
