"""Evaluation of SAM 2 3D propagation on labelled volumes: the papers' protocols, metrics and report.

A thin layer over :mod:`lib.engine`: datasets give (image, ground truth) pairs, protocols turn the
ground truth into prompts and call the engine's session verbs, metrics are MONAI's, the runner makes
it resumable and distributable (Ray), the report writes Markdown with matplotlib figures.
See docs/evaluation.md.
"""
