"""The offline head analysis: similarity, cross-input consistency, clustering, lookups."""
