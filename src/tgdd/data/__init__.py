"""Datasets: a registry of specs, real on-disk loaders, prepared splits and samplers."""
