"""Report: test accuracy across DVC experiments as the paper's table, bar charts and one Markdown page.

    python -m diffaug.report [--params params.yaml] [--exp-json FILE] [--out reports] [--all-commits]
                             [--synthetic data/synthetic]

Reads every experiment's `metrics/summary.json` from `dvc exp show --json` (results.py), keeps the most
recent row per (model, variant, recipe), and writes report.md with the table, one bar chart per
comparison of figures.COMPARISONS, the quality and exchange-rate tables and each set's sample grid
(page.py). A figure whose mixtures or models are absent is not drawn, and a line says why; nothing is
interpolated. Training curves are dvclive's, drawn by `dvc plots show`.
"""
from diffaug.report.page import main

__all__ = ["main"]
