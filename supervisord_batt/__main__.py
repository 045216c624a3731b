"""`python -m supervisord_batt` runs the same CLI as the `supervisord-batt` script."""

from __future__ import annotations

from supervisord_batt.cli.main import main

raise SystemExit(main())
