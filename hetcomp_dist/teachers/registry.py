"""The explicit teacher registry: name -> model class (no decorator magic).

Every class is built as ``cls(n_users, n_items, cfg.teachers, train)``; `model_class` resolves the
options that swap a model for another of its family (``teachers.ae_variant: cdae``).
"""

from __future__ import annotations

from hetcomp_dist.config import TeachersConfig
from hetcomp_dist.errors import InputError
from hetcomp_dist.models.base import Recommender
from hetcomp_dist.teachers.cml import CML
from hetcomp_dist.teachers.iae import ItemAE
from hetcomp_dist.teachers.lightgcn import LightGCN
from hetcomp_dist.teachers.mf import MF
from hetcomp_dist.teachers.neumf import NeuMF
from hetcomp_dist.teachers.vae import CDAE, MultVAE

REGISTRY: dict[str, type[Recommender]] = {
    "mf": MF,  # BPR matrix factorisation
    "ml": CML,  # collaborative metric learning
    "dnn": NeuMF,  # neural matrix factorisation
    "gnn": LightGCN,  # light graph convolution
    "ae": MultVAE,  # user autoencoder (Mult-VAE)
    "iae": ItemAE,  # item autoencoder
}

VARIANTS: dict[tuple[str, str], type[Recommender]] = {("ae", "cdae"): CDAE}


def model_class(name: str, cfg: TeachersConfig) -> type[Recommender]:
    """The class that trains as teacher `name` under `cfg` (an unknown name is an InputError)."""
    if name not in REGISTRY:
        raise InputError(f"teacher {name!r}", "unknown teacher", f"choose from {', '.join(REGISTRY)}")
    if name == "ae" and cfg.ae_variant != "vae":
        return VARIANTS[("ae", cfg.ae_variant)]
    return REGISTRY[name]
