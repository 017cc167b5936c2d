"""The DCASE Task 2 / MIMII data layer: clip names, dataset discovery, audio loading.

Torch-free by design: ``harken evaluate`` and ``harken score --onnx`` use these modules in an
install without PyTorch.
"""
