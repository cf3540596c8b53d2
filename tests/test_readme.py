"""Every command the README (and docs/CLUSTER.md, where it sends cluster users) shows, run as a user
types it: relative paths, the installed CLI entry point, from a fresh working directory that looks like
the repository root (hetcomp_dist/, jobs/ and cluster/ linked in), shortened by ``key=value`` overrides
where it trains.

A README command with a placeholder (RUN, FILE.npz, ...) runs with the placeholder filled in; each one is
listed in RUNS with what fills it. A command that cannot run here (a cloud account, a Kubernetes cluster,
or `ray stop`, which stops every Ray process of the machine) is listed in NOT_RUN with the reason. A
README command in neither list fails `test_every_readme_command_is_run_or_listed`.

Ray Train workers, teacher actors and Ray Data tasks run in working directories of their own, so a
relative RUN that reached them unresolved would fail: these tests fail on such code.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hetcomp_dist.cli.jobs import SMOKE

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# the pages whose commands users copy: the README and the cluster page it sends them to
DOCS = (README, REPO / "docs" / "CLUSTER.md")
TIMEOUT_S = 600
TINY = [o for o in SMOKE if not o.startswith(("data.", "synth."))]  # training cut short, data kept
TINY_STAGE = [
    "eval.batch_size=64",
    *(o for o in TINY if o.startswith(("teachers.", "knowledge.", "student."))),
]

NOT_RUN = {
    "pip install": "the install itself: CI runs it on a fresh machine (.ci/run)",
    "python -m pytest": "the test suite itself",
    "export RAY_AUTH_MODE=disabled": "the long-lived local cluster recipe ends with `ray stop`, which stops "
    "every Ray process of the machine; tests/test_job_submit.py submits the same job to a private head",
    "ray start --head": "see `export RAY_AUTH_MODE=disabled`",
    "ray job submit --address http://127.0.0.1:8265": "see `export RAY_AUTH_MODE=disabled`",
    "ray stop": "see `export RAY_AUTH_MODE=disabled`",
    "ray up cluster/aws.yaml": "needs an AWS account; the launcher YAML is validated in test_cluster_configs",
    "ray dashboard cluster/aws.yaml": "needs the AWS cluster",
    "RAY_ADDRESS=http://127.0.0.1:8265 ray job submit": "needs the AWS cluster",
    "ray down cluster/aws.yaml": "needs the AWS cluster",
    "git archive": "packages the code for KubeRay",
    "aws s3 cp": "needs an AWS account",
    "kubectl": "needs a Kubernetes cluster; the RayJob is validated in test_cluster_configs",
    "python jobs/bench_scale.py": "hours on a quiet machine; tests/test_bench_scale.py runs its --tiny mode",
}

# README command -> the argv that runs it (placeholders filled; overrides shorten training)
RUNS = {
    "hetcomp-dist run --run runs/demo": None,  # the set-up command: test_readme_first_command
    "python jobs/pipeline.py --smoke --run runs/smoke": None,  # test_smoke_job_and_the_local_recipe
    "bash cluster/local.sh --smoke --run runs/smoke": None,  # test_smoke_job_and_the_local_recipe
    "hetcomp-dist synth --users N --items M --seed S --run RUN": [
        "synth",
        "--users",
        "160",
        "--items",
        "120",
        "--seed",
        "0",
        "--run",
        "runs/x",
        "data.shard_size=64",
    ],
    "hetcomp-dist teachers --run RUN [--teachers mf,ml,...]": ["teachers", "--run", "runs/x", *TINY_STAGE],
    "hetcomp-dist teachers import --run RUN --name NAME --states U1,U2,U3,U4 [--observed U]": [
        "teachers",
        "import",
        "--run",
        "runs/x",
        "--name",
        "mine",
        "--states",
        "e1.parquet,e2.parquet,e3.parquet,e4.parquet",
    ],
    "hetcomp-dist teachers import": None,  # named in prose: the command above
    "hetcomp-dist ensemble --run RUN --json": ["ensemble", "--run", "runs/x", "--json", *TINY_STAGE],
    "hetcomp-dist knowledge --run RUN": ["knowledge", "--run", "runs/x", *TINY_STAGE],
    "hetcomp-dist distill --run RUN --method hetcomp|wokd|rd|rrd|mtd|cldrd|dcd --student mf|ml|dnn": [
        "distill",
        "--run",
        "runs/x",
        "--method",
        "hetcomp",
        "--student",
        "mf",
        *TINY_STAGE,
    ],
    "hetcomp-dist evaluate --run RUN --embeddings FILE.npz [--metric ip|l2] --json": [
        "evaluate",
        "--run",
        "runs/x",
        "--embeddings",
        "runs/x/student/hetcomp-mf/emb.npz",
        "--json",
    ],
    "python jobs/reproduce_table2.py --run RUN --student mf": [
        "jobs/reproduce_table2.py",
        "--run",
        "runs/x",
        "--student",
        "mf",
        "--methods",
        "wokd",
        *TINY_STAGE,
    ],
    "python jobs/check_knowledge_rounds.py --run RUN --embeddings EMB.npz --config FILE": [
        "jobs/check_knowledge_rounds.py",
        "--run",
        "runs/x",
        "--embeddings",
        "runs/x/student/hetcomp-mf/emb.npz",
        "--config",
        "tiny.yaml",
    ],
    "hetcomp-dist ingest --input PATH --format citeulike|csv|parquet --run RUN": [
        "ingest",
        "--input",
        "path/to/users.dat",
        "--format",
        "citeulike",
        "--run",
        "runs/c2",
    ],
    "hetcomp-dist ingest --format citeulike --input path/to/users.dat --run runs/citeulike": [
        "ingest",
        "--format",
        "citeulike",
        "--input",
        "path/to/users.dat",
        "--run",
        "runs/citeulike",
    ],
    "hetcomp-dist run --config hetcomp_dist/configs/citeulike.yaml --input users.dat --format citeulike": [
        "run",
        "--config",
        "hetcomp_dist/configs/citeulike.yaml",
        "--input",
        "users.dat",
        "--format",
        "citeulike",
        "--stages",
        "data",
    ],
    "hetcomp-dist run --config hetcomp_dist/configs/citeulike-plus.yaml --input users.dat --format citeulike "
    "--run runs/plus": [
        "run",
        "--config",
        "hetcomp_dist/configs/citeulike-plus.yaml",
        "--input",
        "users.dat",
        "--format",
        "citeulike",
        "--run",
        "runs/plus",
        "--stages",
        "data",
    ],
    "hetcomp-dist run [--config FILE] [--input PATH --format F] [--run RUN] [--stages ...] [key=value ...]": [
        "run",
        "--input",
        "path/to/users.dat",
        "--format",
        "citeulike",
        "--run",
        "runs/c3",
        "--stages",
        "data",
    ],
    "hetcomp-dist synth": ["synth", "--run", "runs/default-synth", "synth.users=80", "synth.items=60"],
    "hetcomp-dist recommend --run runs/demo --k 100": ["recommend", "--run", "runs/demo", "--k", "100"],
    "hetcomp-dist recommend --run runs/demo --users users.txt --exclude banned.txt --out recs": [
        "recommend",
        "--run",
        "runs/demo",
        "--users",
        "users.txt",
        "--exclude",
        "banned.txt",
        "--out",
        "recs",
    ],
    "hetcomp-dist export --run runs/demo --student hetcomp-mf --out bundle": [
        "export",
        "--run",
        "runs/demo",
        "--student",
        "hetcomp-mf",
        "--out",
        "bundle",
    ],
}


def readme_commands() -> list[str]:
    """Every command of DOCS: the lines of their bash blocks (continuations joined, trailing comments
    dropped) and the inline code spans that start like a command."""
    text = "\n".join(doc.read_text() for doc in DOCS)
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            cmd = re.sub(r"\s+#.*$", "", line).strip()
            if cmd:
                out.append(re.sub(r"\s+", " ", cmd))
    for span in re.findall(r"`([^`\n]+)`", text):
        span = span.replace("\\|", "|")
        if span.startswith(("hetcomp-dist ", "python jobs/", "bash cluster/", "python -m pytest")):
            if not span.startswith("hetcomp-dist COMMAND"):
                out.append(span)
    return out


def _covered(cmd: str) -> bool:
    return cmd in RUNS or any(cmd.startswith(p) for p in NOT_RUN)


def test_every_readme_command_is_run_or_listed():
    cmds = readme_commands()
    assert len(cmds) > 20
    split = [c for part in cmds for c in part.split(" && ")]  # the set-up lines chain pip with the command
    assert [c for c in split if not _covered(c)] == []
    assert {c for c in RUNS} <= set(split), "RUNS lists a command the README no longer shows"


@pytest.fixture(scope="module")
def cwd(tmp_path_factory) -> Path:
    """A fresh working directory shaped like the repository root (the README's commands run from there)."""
    d = tmp_path_factory.mktemp("user")
    for name in ("hetcomp_dist", "jobs", "cluster"):
        (d / name).symlink_to(REPO / name)
    return d


def _env() -> dict:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    env.pop("RAY_ADDRESS", None)
    return env


def _sh(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    print(res.stdout[-4000:], res.stderr[-6000:])  # shown when an assertion fails
    return res


def test_readme_first_command(cwd):
    """The set-up's command, as written, with a relative RUN (overrides shorten it to a smoke run)."""
    first = re.search(r"```bash\n(.*?)\n```", README.read_text()).group(1).split(" && ")[-1]
    assert first == "hetcomp-dist run --run runs/demo"
    res = _sh([*first.split(), *SMOKE], cwd)
    assert res.returncode == 0
    report = cwd / "runs" / "demo" / "report" / "report.md"
    assert report.exists() and "| HetComp |" in report.read_text()
    assert f"report: {cwd}/runs/demo/report/report.md" in res.stdout


def test_smoke_job_and_the_local_recipe(cwd):
    res = _sh(["python", "jobs/pipeline.py", "--smoke", "--run", "runs/smoke"], cwd)
    assert res.returncode == 0
    assert (cwd / "runs" / "smoke" / "report" / "report.md").exists()
    assert res.stdout.rstrip().splitlines()[-1] == f"output: {cwd}/runs/smoke/report/report.json"
    # each progress line once: Ray Train's patched print and root logger must not echo it a second time
    epochs = [x[x.index("[student] epoch") :] for x in res.stderr.splitlines() if "[student] epoch" in x]
    assert epochs and len(epochs) == len(set(epochs))
    # the real job path (a private head, ray job submit): the data stage of a second run
    res = _sh(["bash", "cluster/local.sh", "--smoke", "--run", "runs/smoke2", "--stages", "data"], cwd)
    assert res.returncode == 0
    assert (cwd / "runs" / "smoke2" / "data" / "_manifest.json").exists()


@pytest.fixture(scope="module")
def chain(cwd, ray_session) -> Path:
    """The Command line table's stages on one small RUN, then the CiteULike-format and student commands."""
    from hetcomp_dist.cli import main as cli

    users = [" ".join(["6", *(str((u * 7 + k * 3) % 40) for k in range(6))]) for u in range(30)]
    for path in ("path/to/users.dat", "users.dat"):
        (cwd / path).parent.mkdir(parents=True, exist_ok=True)
        (cwd / path).write_text("\n".join(users) + "\n")
    import yaml

    from hetcomp_dist.config import load_config, to_dict

    tiny = to_dict(load_config(None, TINY_STAGE))  # the settings the stage commands above train with
    (cwd / "tiny.yaml").write_text(yaml.safe_dump({k: tiny[k] for k in ("eval", "teachers", "knowledge")}))
    (cwd / "users.txt").write_text("1\n2\n")
    (cwd / "banned.txt").write_text("3\n")
    old = os.getcwd()
    os.chdir(cwd)
    try:
        for cmd, argv in RUNS.items():
            if argv is None or argv[0].startswith("jobs/") or "runs/demo" in argv:
                continue
            if argv[:2] == ["teachers", "import"]:
                _exported_elsewhere(cwd / "runs" / "x")
            assert cli.main(argv) == 0, cmd
    finally:
        os.chdir(old)
    return cwd


def _exported_elsewhere(run: Path) -> None:
    """e1..e4.parquet: a teacher 'trained elsewhere' (the run's mf teacher's states, raw ids = its ids)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for e in range(1, 5):
        t = pq.read_table(run / "teachers" / "mf" / f"state={e}")
        pq.write_table(pa.table({"user": t["user"].cast(pa.int64()), "items": t["items"]}), f"e{e}.parquet")


def test_stage_commands(chain):
    run = chain / "runs" / "x"
    for stage in ("data", "teachers", "knowledge"):
        assert (run / stage / "_manifest.json").exists() or (run / stage / "round=0").exists()
    assert (run / "student" / "hetcomp-mf" / "_manifest.json").exists()
    assert (run / "teachers" / "mine" / "_manifest.json").exists()  # the imported teacher
    for name in ("citeulike", "c2", "c3"):
        assert (chain / "runs" / name / "data" / "_manifest.json").exists()
    assert (chain / "runs" / "default" / "data" / "_manifest.json").exists()  # the citeulike.yaml command
    assert (chain / "runs" / "plus" / "data" / "_manifest.json").exists()  # the citeulike-plus.yaml one


@pytest.mark.parametrize("script", ["jobs/reproduce_table2.py", "jobs/check_knowledge_rounds.py"])
def test_job_scripts(chain, script):
    (argv,) = [a for a in RUNS.values() if a and a[0] == script]
    res = _sh([sys.executable, *argv], chain)
    assert res.returncode == 0


def test_use_the_student(chain):
    """The 'Use the student' commands on the demo run, then the Python snippet as written."""
    from hetcomp_dist.cli import main as cli
    from hetcomp_dist.serving.recommend import read_recommendations

    demo = chain / "runs" / "demo"
    if not (demo / "student" / "hetcomp-mf" / "_manifest.json").exists():
        pytest.skip("the first command's run is missing (test_readme_first_command failed)")
    old = os.getcwd()
    os.chdir(chain)
    try:
        for cmd, argv in RUNS.items():
            if argv and "runs/demo" in argv:
                assert cli.main(argv) == 0, cmd
        snippet = re.search(r"```python\n(.*?)```", README.read_text(), flags=re.S).group(1)
        scope: dict = {}
        exec(snippet, scope)  # noqa: S102 - the README's own snippet
    finally:
        os.chdir(old)
    every = read_recommendations(str(demo / "recommend" / "hetcomp-mf"))
    some = read_recommendations(str(chain / "recs"))
    assert every.num_rows == 160 and sorted(some.column("user").to_pylist()) == [1, 2]
    assert all(3 not in items for items in some.column("items").to_pylist())
    assert len(scope["ids"]) == 2 and len(scope["similar"][0]) == 10
    assert json.loads((chain / "bundle" / "model.json").read_text())["student"] == "mf"
