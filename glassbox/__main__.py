"""``python -m glassbox ...``: the command line (see :mod:`glassbox.cli`)."""
from glassbox.cli import main

raise SystemExit(main())
