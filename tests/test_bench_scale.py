"""The scale bench (jobs/bench_scale.py): its pure parts (sizes, the fit checks, the exponent), its meter
(`procstats` on a child process), the committed scale config, its summary over sizes, and -- marked slow --
its tiny mode end to end at one size: the JSON line's shape and the quality check."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hetcomp_dist.config import load_config
from hetcomp_dist.errors import InputError
from hetcomp_dist.procstats import TreeSampler
from hetcomp_dist.scale import check_fits, exponent, items_for, train_interactions

REPO = Path(__file__).resolve().parents[1]
SCALE = str(REPO / "hetcomp_dist" / "configs" / "scale.yaml")


def _size(users: int, *overrides: str):
    return load_config(SCALE, [f"synth.users={users}", f"synth.items={items_for(users)}", *overrides])


def test_exponent_is_the_log_log_slope():
    users = [100_000, 300_000, 1_000_000]
    assert exponent(users, [2.0 * u for u in users]) == pytest.approx(1.0)
    assert exponent(users, [3e-9 * u**2 for u in users]) == pytest.approx(2.0)
    assert exponent(users, [5.0, 5.0, 5.0]) == pytest.approx(0.0)
    # a plain least-squares reference on three noisy points
    walls = [10.0, 33.0, 95.0]
    xs, ys = [math.log(u) for u in users], [math.log(w) for w in walls]
    mx, my = sum(xs) / 3, sum(ys) / 3
    ref = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    assert exponent(users, walls) == pytest.approx(ref)
    assert exponent([100_000], [10.0]) is None and exponent(users, [1.0, 0.0, 2.0]) is None


def test_the_scale_config_fits_every_size_of_the_bench():
    for users in (100_000, 300_000, 1_000_000):
        cfg = _size(users)
        check_fits(cfg)
        assert cfg.synth.items == users // 10
        assert cfg.teachers.export_index == "ivf" and cfg.teachers.export_recall_users > 0
        assert cfg.teachers.max_epochs == 4 and cfg.student.max_epochs == 20
    tiny = [line.strip().strip('",') for line in _bench_constant("TINY")]
    for users in (2000, 4000):
        check_fits(_size(users, *tiny))


def _bench_constant(name: str) -> list[str]:
    """The lines of a tuple constant of jobs/bench_scale.py (read as text: jobs/ is not a package)."""
    text = (REPO / "jobs" / "bench_scale.py").read_text()
    body = text.split(f"\n{name} = (\n", 1)[1].split("\n)\n", 1)[0]
    return [line for line in body.splitlines() if line.strip() and not line.strip().startswith("#")]


@pytest.mark.parametrize(
    "override, field",
    [
        ("data.shard_size=200000", "data.shard_size"),  # a shard above the users
        ("teachers.batch_size=2000000", "teachers.batch_size"),  # above the train interactions
        ("teachers.ae.batch_size=200000", "teachers.ae.batch_size"),  # ae batches users
        ("teachers.iae.batch_size=20000", "teachers.iae.batch_size"),  # iae batches items
        ("student.batch_size=2000000", "student.batch_size"),
    ],
)
def test_a_scale_config_that_cannot_fit_is_refused(override, field):
    cfg = _size(100_000, override)
    assert train_interactions(cfg) == 100_000 * 20 * 0.6
    with pytest.raises(InputError, match=re.escape(f"config.{field}: ") + ".* 100,000-user size"):
        check_fits(cfg)


def test_the_bench_refuses_a_config_that_cannot_fit_before_anything_runs(tmp_path):
    res = subprocess.run(
        [sys.executable, "jobs/bench_scale.py", "--users", "1000", "--workdir", str(tmp_path / "w")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2
    assert "data.shard_size: 50,000 users per shard is above the 1,000 users" in res.stderr.splitlines()[-1]
    assert not (tmp_path / "w").exists()


def test_tree_sampler_measures_a_child_process(tmp_path):
    """CPU seconds, peak memory (the kernel's high-water mark, between two samples too) and bytes written of
    a child that works, allocates and frees 300 MiB, writes 20 MiB and exits."""
    script = textwrap.dedent(
        f"""
        import os, time
        t = time.process_time()
        while time.process_time() - t < 0.6:
            pass
        block = bytearray(300 * 2**20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        del block
        with open({str(tmp_path / "out.bin")!r}, "wb") as f:
            f.write(os.urandom(20 * 2**20))
            f.flush()
            os.fsync(f.fileno())
        time.sleep(0.5)
        """
    )
    sampler = TreeSampler(period_s=0.1).start()
    try:
        sampler.open_window()
        subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
        got = sampler.close_window()
    finally:
        sampler.stop()
    assert got["processes"] >= 1
    assert 0.4 <= got["cpu_s"] <= 30
    assert got["peak_rss_gib"] >= 0.28
    assert got["io_write_gib"] >= 0.018 or got["io_write_gib"] == 0.0  # 0: no /proc/<pid>/io here
    assert got["machine_peak_gib"] > 0 and got["tree_peak_rss_gib"] > 0


def _bench_module():
    """jobs/bench_scale.py as a module (jobs/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_scale", REPO / "jobs" / "bench_scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_size(users: int, bench, slopes: dict, student_r50: float) -> dict:
    """One size's measured results as `one_size` returns them: every stage's wall is users**slope / 10."""
    stages = {}
    for i, stage in enumerate(bench.STAGES):
        stages[stage] = {
            "wall_s": users ** slopes[stage] / 10,
            "cpu_s": 2.0 * (i + 1),
            "peak_rss_gib": 0.1 * (i + 1) * users / 1000,
            "tree_peak_rss_gib": 0.5,
            "machine_peak_gib": 1.0 + users / 1000,
            "bytes_written": users * (i + 1),
            "io_write_gib": 0.0,
        }
    stages["ensemble"] |= {"popularity_valid_R@50": 0.05, "ensemble_valid_R@50": 0.2}
    stages["student"] |= {
        "valid_R@50": student_r50,
        "dkc_rounds": [
            {"wall_s": users / 500, "peak_rss_gib": 0.3},
            {"wall_s": users / 250, "peak_rss_gib": 0.4},
        ],
    }
    stages["teachers"]["teachers"] = {
        "mf": {
            "recall_vs_exact": 0.97,
            "valid_R@50": 0.1,
            "search_breadth": [{"nprobe": 8, "nlist": 64}],
            "wall_s": users / 100,
            "train_s": users / 300,
            "export_s": users / 150,
            "cpu_s": users / 90,
            "train_cpu_s": users / 270,
            "export_cpu_s": users / 135,
        },
        "iknn": {"recall_vs_exact": None, "valid_R@50": 0.12, "search_breadth": None},
    }
    return {"users": users, "items": users // 10, "wall_s": 60.0 * users / 1000, "stages": stages}


def test_summary_of_two_sizes_against_a_hand_computed_slope():
    """`summarise`, the bench's JSON over its sizes (the tiny run below runs one size): each stage's
    exponent is the two-point log-log slope, the DKC rounds are averaged per size, quality and targets
    read every size and the largest."""
    bench = _bench_module()
    slopes = dict(zip(bench.STAGES, (1.0, 1.3, 0.5, 1.0, 0.9, 1.1)))
    results = [_fake_size(1000, bench, slopes, 0.15), _fake_size(4000, bench, slopes, 0.04)]
    args = type("Args", (), {"cpus": 2, "config": "/elsewhere/scale.yaml", "all_overrides": ["a=1"]})()
    out = bench.summarise(results, 0.25, args)
    assert out["sizes"] == [1000, 4000] and out["wall_s"] == {"1000": 60.0, "4000": 240.0}
    for stage, b in slopes.items():
        st = out["stages"][stage]
        ref = math.log(st["wall_s"]["4000"] / st["wall_s"]["1000"]) / math.log(4)
        assert st["exponent"] == pytest.approx(b, abs=1e-3) == pytest.approx(ref, abs=1e-3), stage
        assert st["users_per_s"]["4000"] == pytest.approx(4000 / (4000**b / 10), abs=0.05)
    per = out["stages"]["teachers"]["per_teacher"]
    assert per["4000"]["mf"] == {
        "wall_s": 40.0,
        "train_s": 13.3,
        "export_s": 26.7,
        "cpu_s": 44.4,
        "train_cpu_s": 14.8,
        "export_cpu_s": 29.6,
    }
    assert per["1000"]["iknn"] == {}  # fields a teacher's metrics lack are left out
    dkc = out["stages"]["dkc"]
    assert dkc["rounds"] == {"1000": 2, "4000": 2}
    assert dkc["wall_s"] == {"1000": 3.0, "4000": 12.0} and dkc["exponent"] == pytest.approx(1.0)
    q = out["quality"]
    assert q["1000"]["student_beats_popularity"] and not q["4000"]["student_beats_popularity"]
    assert q["4000"]["export_recall"] == {"mf": 0.97, "iknn": None} and q["4000"]["export_recall_min"] == 0.97
    t = out["targets"]
    assert t["largest_users"] == 4000 and t["wall_min"] == 4.0 and t["wall_ok"]
    assert t["largest_process_gib"] == pytest.approx(0.1 * 6 * 4) and t["process_ok"]
    assert t["machine_gib"] == 5.0 and t["machine_ok"] and out["machine_peak_rss_gib"]["1000"] == 2.0
    assert t["max_exponent"] == pytest.approx(1.3, abs=1e-3) and t["exponent_ok"] is False
    assert t["quality_ok"] is False and t["recall_ok"] is True


@pytest.mark.slow
def test_tiny_bench_json_shape_and_quality(tmp_path):
    """The tiny settings at one size, end to end (the slope over sizes: the summary test above)."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    cmd = ["jobs/bench_scale.py", "--tiny", "--users", "2000", "--workdir", str(tmp_path / "w")]
    res = subprocess.run(
        [sys.executable, *cmd],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=2400,
    )
    *table, last = res.stdout.strip().splitlines() or [""]  # the table and quality lines, then the JSON line
    print("\n".join(table)[-3000:], last[:3000], res.stderr[-6000:], sep="\n")
    assert res.returncode == 0
    out = json.loads(res.stdout.strip().splitlines()[-1])
    sizes = ["2000"]
    assert set(out["wall_s"]) == set(sizes) and out["sizes"] == [2000]
    assert all(out["stages_wall_s"][s] < out["wall_s"][s] for s in sizes)
    stages = {"data", "teachers", "ensemble", "knowledge", "student", "recommend"}
    assert stages <= set(out["stages"]) and "dkc" in out["stages"]
    for name in stages:
        st = out["stages"][name]
        for key in ("wall_s", "users_per_s", "cpu_s", "peak_rss_gib", "bytes_written"):
            assert set(st[key]) == set(sizes), (name, key)
        assert all(v > 0 for v in st["wall_s"].values()), name
        assert st["exponent"] is None, name  # one size: no slope
        assert all(0 < v < 20 for v in st["peak_rss_gib"].values()), name
    assert out["stages"]["dkc"]["rounds"] == {s: 2 for s in sizes}, "two DKC rounds per size"
    assert all(out["stages"][s]["bytes_written"]["2000"] > 0 for s in ("data", "teachers", "knowledge"))
    assert set(out["machine_peak_rss_gib"]) == set(sizes)
    for s in sizes:
        q = out["quality"][s]
        assert q["ensemble_beats_popularity"] and q["student_beats_popularity"], q
        assert set(q["export_recall"]) == {"mf", "ml", "dnn", "gnn", "ae", "iae"}
        assert 0 < q["export_recall_min"] <= 1
        # the scale config sizes each state's IVF search (teachers.export_recall_target)
        assert set(q["export_search"]) == set(q["export_recall"])
        for states in q["export_search"].values():
            # each state: an IVF's probes, or the exact index it was handed to (teachers.export_exact_share;
            # on NeuMF's candidate path, a flat search of its candidate vectors)
            assert len(states) == 4 and all(
                b in ({"exact": True}, {"flat_candidates": True}) or 1 <= b["nprobe"] <= b["nlist"]
                for b in states
            ), states
    assert set(out["targets"]) >= {"wall_ok", "process_ok", "machine_ok", "exponent_ok", "quality_ok"}
    assert out["targets"]["quality_ok"]
