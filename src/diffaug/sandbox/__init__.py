"""Scaffolding for tests, benchmarks and the offline demo: never imported by a pipeline stage.

tiny   Stable Diffusion pipelines with random weights, built from diffusers configs
demo   `make demo`: every dvc.yaml stage in a scratch repository on the tiny pipeline and toy data

It sits outside every stage's dvc.yaml deps, so editing a fixture reruns nothing.
"""
