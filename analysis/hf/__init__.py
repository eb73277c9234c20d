"""The transformers integration: the only part of sharedattn.analysis that imports transformers."""
