"""``python -m aioeventstore verify|repair PATH``: see ``_cli.py``."""

from ._cli import main

raise SystemExit(main())
