"""The SharePrefill method and the analyses around it: capture, similarity, clustering, sharing."""
