"""A destination plugin whose import fails (a missing dependency, a bug at import time)."""
raise RuntimeError("tracelet_broken cannot be imported (on purpose, for the tests)")
