"""Training machinery: balanced sampling, the alternating two-step loop, checkpoints, DDP.

Nothing is imported here so that each submodule's import cost is paid only where it is used.
"""
