"""The train stage: one classifier per (architecture, mixture, seed).

  python -m diffaug.train --params params.yaml --model resnet18 --mix orig100 \
      --mixture data/mixtures/orig100.npz --prepared data/prepared --synthetic data/synthetic \
      --out models/resnet18/orig100 --metrics metrics/train/resnet18/orig100 \
      --checkpoints checkpoints/resnet18/orig100

Modules: loop (Trainer, fit, checkpoints), augment, schedule (lr(step)), stage (the CLI); model files: formats.classifier.
"""
