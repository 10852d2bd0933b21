"""``python -m biasloop``: the ``biasloop`` command (the same as ``python -m biasloop.cli``)."""

from biasloop.cli import main

raise SystemExit(main())
