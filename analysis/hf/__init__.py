"""The transformers integration: the only part of sharedattn.analysis that imports transformers."""

from .sparse_attention import register_methods

register_methods()
