"""``python -m statekeeper``: the same as the ``statekeeper`` command."""

from statekeeper.cli import main

main()
