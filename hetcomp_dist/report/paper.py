"""The paper's CiteULike numbers (METHOD.md §5, test split, dimension-6 students), for side-by-side tables."""

METRICS = ("R@10", "N@10", "R@50", "N@50")

# method -> student -> (R@10, N@10, R@50, N@50)
PAPER_CITEULIKE: dict[str, dict[str, tuple[float, float, float, float]]] = {
    "ensemble": {"-": (0.1550, 0.1156, 0.3144, 0.1571)},
    "best_teacher": {"-": (0.1337, 0.0994, 0.2844, 0.1392)},
    "wokd": {
        "mf": (0.0568, 0.0422, 0.1372, 0.0634),
        "ml": (0.0210, 0.0148, 0.0859, 0.0323),
        "dnn": (0.0414, 0.0339, 0.1095, 0.0518),
    },
    "rd": {"mf": (0.0610, 0.0472, 0.1514, 0.0725)},
    "rrd": {"mf": (0.0973, 0.0740, 0.2422, 0.1113)},
    "mtd": {"mf": (0.0993, 0.0749, 0.2425, 0.1118)},
    "cldrd": {"mf": (0.1033, 0.0794, 0.2512, 0.1175)},
    "dcd": {"mf": (0.1106, 0.0851, 0.2640, 0.1246)},
    "hetcomp": {
        "mf": (0.1379, 0.1031, 0.2814, 0.1396),
        "ml": (0.1251, 0.0916, 0.2686, 0.1287),
        "dnn": (0.1381, 0.1050, 0.2864, 0.1413),
    },
}

LABELS = {
    "ensemble": "Ensemble (teachers)",
    "best_teacher": "Best single teacher",
    "wokd": "Student w/o KD",
    "rd": "RD",
    "rrd": "RRD",
    "mtd": "MTD",
    "cldrd": "CL-DRD",
    "dcd": "DCD",
    "hetcomp": "HetComp",
}
