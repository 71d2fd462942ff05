"""The run directory (every cell's result as it finishes), the release gate between two runs,
and known failures."""
