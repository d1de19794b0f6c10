"""features/mapper."""
