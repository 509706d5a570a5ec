"""Shared curvature building blocks (Kronecker factors, EMA, damping, BFGS updates)."""
