"""``python -m biasloop.cli``: the ``biasloop`` command."""

from biasloop.cli import main

raise SystemExit(main())
