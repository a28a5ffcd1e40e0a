"""The in-memory transport (``inmem://NAME``): servers and channels inside one process."""
