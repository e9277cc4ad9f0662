"""Attention of the draft: the single-device oracle, block kernels, the TTT step, Ulysses, ring, USP."""
