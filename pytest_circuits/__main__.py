"""``python -m pytest_circuits COMMAND ...``: see :mod:`pytest_circuits.cli`."""

from .cli import main

raise SystemExit(main())
