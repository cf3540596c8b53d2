"""The explicit model registries: teacher name -> class, student name -> class (no decorator magic).

Every class is built as ``cls(n_users, n_items, cfg.teachers, train)``; `model_class` resolves the
options that swap a model for another of its family (``teachers.ae_variant: cdae``).
"""

from __future__ import annotations

from hetcomp_dist.config import StudentConfig, TeachersConfig
from hetcomp_dist.errors import InputError
from hetcomp_dist.models.als import ALS
from hetcomp_dist.models.base import Recommender
from hetcomp_dist.models.cml import CML
from hetcomp_dist.models.iae import ItemAE
from hetcomp_dist.models.iknn import ItemKNN, RP3Beta
from hetcomp_dist.models.lightgcn import LightGCN
from hetcomp_dist.models.mf import MF
from hetcomp_dist.models.neumf import NeuMF
from hetcomp_dist.models.students import DNNStudent, MFStudent, MLStudent, Student
from hetcomp_dist.models.vae import CDAE, MultVAE

TEACHERS: dict[str, type[Recommender]] = {
    "mf": MF,  # BPR matrix factorisation
    "ml": CML,  # collaborative metric learning
    "dnn": NeuMF,  # neural matrix factorisation
    "gnn": LightGCN,  # light graph convolution
    "ae": MultVAE,  # user autoencoder (Mult-VAE)
    "iae": ItemAE,  # item autoencoder
    "als": ALS,  # implicit-feedback ALS (the `implicit` package's solver)
    "iknn": ItemKNN,  # item-based kNN, cosine similarity
    "rp3": RP3Beta,  # item-based kNN, RP3beta's random-walk weights
}

VARIANTS: dict[tuple[str, str], type[Recommender]] = {("ae", "cdae"): CDAE}


def model_class(name: str, cfg: TeachersConfig) -> type[Recommender]:
    """The class that trains as teacher `name` under `cfg` (an unknown name is an InputError)."""
    if name not in TEACHERS:
        raise InputError(f"teacher {name!r}", "unknown teacher", f"choose from {', '.join(TEACHERS)}")
    if name == "ae" and cfg.ae_variant != "vae":
        return VARIANTS[("ae", cfg.ae_variant)]
    return TEACHERS[name]


STUDENTS: dict[str, type[Student]] = {"mf": MFStudent, "ml": MLStudent, "dnn": DNNStudent}


def build_student(name: str, n_users: int, n_items: int, cfg: StudentConfig) -> Student:
    """The student `name` (mf | ml | dnn), initialised from torch's current RNG state."""
    if name not in STUDENTS:
        raise ValueError(f"unknown student {name!r}; choose one of {', '.join(STUDENTS)}")
    return STUDENTS[name](n_users, n_items, cfg)
