"""Kernels of HydraLM written in plain PyTorch."""
