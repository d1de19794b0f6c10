"""features/writer."""
