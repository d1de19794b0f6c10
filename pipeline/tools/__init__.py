"""pipeline/tools."""
