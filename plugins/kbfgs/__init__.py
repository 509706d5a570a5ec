"""Backend package (implementation in progress)."""
