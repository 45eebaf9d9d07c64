"""Benchmark-only stand-in for torchvision, on the BUILT-IN server's path only (see docs/benchmark.md).

SAM 2's image predictor imports three transforms from torchvision; CPU torch has no working torchvision
wheel here (install.md), so this gives those three, computed as torchvision computes them on tensors.
"""
