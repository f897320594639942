"""``python -m pulse_cli``: the ``pulse`` command without the console script."""

from pulse_cli.main import main

main()
