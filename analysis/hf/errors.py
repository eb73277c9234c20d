"""Errors of the transformers integration."""


class ModelLoadError(RuntimeError):
    """The model cannot be loaded; the message is one line for the user."""
