"""`python -m diffaug.report`: every experiment's metrics/summary.json, read from `dvc exp show --json`
(results.py), as the paper's table, one bar chart per comparison (figures.py) and report.md (page.py).
A figure whose mixtures or models are absent is not drawn, and a line says why; nothing is interpolated."""
from diffaug.report.page import main

__all__ = ["main"]
