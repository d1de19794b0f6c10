"""features/reader."""
