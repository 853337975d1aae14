"""Built-in task data and generators, loaders and exporters."""

from assay.datasets import gsm8k  # noqa: F401  (Gsm8kProblems, DecontaminateGsm8k)
