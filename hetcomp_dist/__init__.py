"""hetcomp_dist: HetComp (Kang et al., WWW 2023) as a distributed trainer on Ray."""

__version__ = "0.1.0"
