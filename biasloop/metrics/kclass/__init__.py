"""K-class attribute metrics."""
