"""``python -m tracelet.destinations.clearml import [--dry-run] [OFFLINE_DIR]``: upload the
offline sessions a sync wrote (see the README, ClearML section)."""
from .client import _main

raise SystemExit(_main())
