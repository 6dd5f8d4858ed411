"""``python -m crilab`` is the ``crilab`` command."""

from .cli import main

raise SystemExit(main())
