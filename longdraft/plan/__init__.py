"""``longdraft plan``: one real training step of one rank of any layout, on one device (fake process group)."""
