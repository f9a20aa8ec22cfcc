"""``python -m tracelet.destinations.clearml import [--dry-run] [OFFLINE_DIR]``: upload the
offline sessions a sync wrote (see the README, ClearML section, and :mod:`.importer`)."""
from .importer import _main

raise SystemExit(_main())
