"""The benchmarks' official layouts, read and written, and their scores.

``davis`` (DAVIS-2017: sets, frames, annotations, palette PNGs),
``davis_score`` (the official J&F), ``jhmdb`` (frames, joint ``.mat`` files,
splits, heatmaps, decoding and PCK), ``vip`` (frames, part labels, lists and
the confusion matrix) and ``summary`` (JSON-safe summary files).

This package imports nothing else of ``siammae_jax``: ``data`` writes these
layouts (synthetic sets, TFDS builders) and ``eval`` reads and scores them.
"""
