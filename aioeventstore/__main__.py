"""``python -m aioeventstore COMMAND PATH``: see ``_cli.py``."""

from ._cli import main

raise SystemExit(main())
