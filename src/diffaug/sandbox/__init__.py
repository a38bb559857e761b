"""Scaffolding for tests, benchmarks and `make demo` (tiny: random-weight pipelines; demo: the whole pipeline
on toy data); never imported by a stage, and outside every stage's dvc.yaml deps, so editing it reruns nothing."""
