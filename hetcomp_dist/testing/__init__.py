"""Test scaffolding (toy runs, synthetic trajectories, fault hooks): used by tests and benchmarks, never
by the product."""
