"""pipeline/serve."""
