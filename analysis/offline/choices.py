"""Closed choices of the similarity and clustering analyses, in a module that imports no torch.

The CLI uses these Enums for its options, so `sharedattn --help` stays fast; the library modules
(`similarity`, `clustering`) re-export them.
"""
from __future__ import annotations

from enum import Enum


class Metric(str, Enum):
    JACCARD = "jaccard"  # Jaccard index of coverage masks at gamma (the paper's metric)
    JS = "js"  # 1 - sqrt JS distance of block-pooled vertical and slash profiles
    COSINE = "cosine"  # cosine similarity of block-mass maps


class JsCombine(str, Enum):
    WORST = "worst"  # 1 - max(d_vertical, d_slash): the online test needs both profiles close
    MEAN = "mean"  # 1 - mean(d_vertical, d_slash)


class Linkage(str, Enum):
    AVERAGE = "average"
    COMPLETE = "complete"
    SINGLE = "single"
    WEIGHTED = "weighted"
    WARD = "ward"  # Euclidean features only (autoencoder route)


class Features(str, Enum):
    SIMILARITY = "similarity"  # cluster on 1 - mean similarity over the calibration prompts
    AUTOENCODER = "autoencoder"  # cluster the latent codes of a convolutional autoencoder
