"""tgdd: Trajectory Guided Dataset Distillation and its baselines, reproducibly."""

__version__ = "0.1.0"
