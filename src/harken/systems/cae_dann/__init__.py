"""The CAE-DANN-SVDD system: a convolutional autoencoder regularized by Deep SVDD and DANN.

``torch_model`` holds the networks (autoencoder, gradient reversal, domain classifier, SVDD
center, the export-friendly scorer), ``loss`` the objectives and the two alternating update
steps of Algorithm 1, ``system`` the :class:`~harken.systems.base.Detector` around them.
Nothing is imported here so that importing the package stays cheap.
"""
