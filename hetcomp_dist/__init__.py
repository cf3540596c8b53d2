"""hetcomp_dist: HetComp (Kang et al., WWW 2023) as a distributed trainer on Ray."""

__version__ = "0.1.0"


def load_bundle(path: str):
    """A serving bundle written by ``hetcomp-dist export`` (see `hetcomp_dist.serving.bundle`)."""
    from hetcomp_dist.serving.bundle import load_bundle as _load

    return _load(path)
