"""Machine-generalized Audio Mamba (AuM; Erol et al., 2024) for the report's comparison.

``torch_model`` holds the network: 16 x 16 patch embedding of the log-mel, a learnable class
token in the middle of the patch sequence, bidirectional Mamba blocks (pure PyTorch through
``mambapy``; mamba-ssm's CUDA scan when installed), the class token's final state as the
embedding for SVDD scoring, and a domain classifier behind a gradient reversal layer.
Nothing is imported here so that importing the package stays cheap (and torch-free).
"""
