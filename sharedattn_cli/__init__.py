"""The `sharedattn` command-line interface."""
