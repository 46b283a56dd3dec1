"""``python -m watchnext`` is the ``watchnext`` command."""

from watchnext.cli import main

raise SystemExit(main())
