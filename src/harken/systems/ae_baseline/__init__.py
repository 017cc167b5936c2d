"""The DCASE 2023-2025 Task 2 autoencoder baseline (nttcslab/dcase2023_task2_baseline_ae).

``torch_model`` holds the network, the five-frame stacking and the selective Mahalanobis
arithmetic; ``system`` the two registered detectors (``ae-baseline``: MSE score,
``ae-baseline-mahala``: selective Mahalanobis score).  Nothing is imported here so that
importing the package stays cheap.

For reference, the organizers publish this system's DCASE 2025 development-set official score
as about 0.5625 with the MSE score and 0.5534 with the selective Mahalanobis score.  harken
cannot reproduce those numbers here (the real data are not available in this environment); the
tests check the arithmetic against the official code instead.
"""
