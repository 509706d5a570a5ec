"""Dense float64 oracles (Hessian, GGN, Fisher, directional derivatives) for tests."""
