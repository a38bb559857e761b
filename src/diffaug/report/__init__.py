"""Report: test accuracy across DVC experiments as the paper's table, bar charts and one Markdown page.

    python -m diffaug.report [--params params.yaml] [--exp-json FILE] [--out reports] [--all-commits]
                             [--synthetic data/synthetic]

Reads every experiment's `metrics/summary.json` (written by the evaluate stage) from `dvc exp show
--json` (run in the repository around the current directory, unless --exp-json gives its saved
output), keeps one row per (model, variant, recipe) (see results.select_rows), labels mixtures by
their fractions in params.yaml, and writes under --out:

  report.md     the table (a row per experiment, a column per mixture, mean ± std over seeds when
                there are several), the synthetic sets' quality and exchange-rate tables, and the
                figures below; training curves are dvclive's, drawn by `dvc plots show`
  acc_<model>.png, resnet_sizes.png, half_real_half_synthetic.png, synthetic_only.png,
  classic_augmentation.png, filtered_vs_unfiltered.png, img2img_strength.png
                the same bar chart (figures.bar_chart) for each comparison in figures.COMPARISONS
  samples_<set>.png   each synthetic set's sample grid, copied (Fig. 8)

A figure whose mixtures or models are absent from the results is not drawn: a line says why, on
stdout and in report.md; nothing is interpolated or made up. Exit code 2 with one line when dvc is
unavailable, `dvc exp show` fails, params.yaml is invalid or there are no results.
"""
from diffaug.report.page import main

__all__ = ["main"]
