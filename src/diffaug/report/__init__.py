"""Report: test accuracy across DVC experiments as the paper's bar charts, and one Markdown page.

    python -m diffaug.report [--params params.yaml] [--exp-json FILE] [--out reports] [--all-commits]
                             [--train-metrics metrics/train] [--synthetic data/synthetic]

Reads every experiment's `metrics/summary.json` (written by the evaluate stage) from
`dvc.api.exp_show()` (the repository around the current directory, unless --exp-json gives its rows
saved as JSON), keeps
one row per (model, variant, recipe) (see results.select_rows), labels mixtures by their fractions in
params.yaml, and writes under --out:

  acc_<model>.png                 test accuracy per mixture, one architecture (paper Fig. 2-6)
  resnet_sizes.png                resnet18 / resnet34 / resnet50 across mixtures
  half_real_half_synthetic.png    50% real alone vs 50% real + 50% syn1 / syn2
  synthetic_only.png              synthetic-only mixtures vs 100% real
  classic_augmentation.png        50% real (+ rotated / v-flipped copies) vs 50% real + 50% synthetic (Fig. 7)
  filtered_vs_unfiltered.png      each filtered mixture beside its unfiltered twin (mixtures.<name>.filter)
  training_curves.png             dvclive curves of the workspace's cells (params `model` x `mixes` x seeds)
  samples_<set>.png               each synthetic set's sample grid, copied (Fig. 8)
  report.md                       every figure above, and a table: a row per experiment, a column per
                                  mixture, mean ± std over seeds when there are several

A figure whose mixtures or models are absent from the results is not drawn: a line says why, on
stdout and in report.md; nothing is interpolated or made up. Exit code 2 with one line when dvc is
unavailable, `dvc.api.exp_show()` fails, params.yaml is invalid or there are no results.

Modules: results (dvc.api.exp_show() rows -> results), figures (labels, matplotlib drawings), page (report.md, CLI).
"""
from diffaug.report.page import main

__all__ = ["main"]
