"""fleetkeep's backup engine against restic and borg on the same seeded data set.

    uv run python bench/backup_vs_restic_borg.py [--size-mb 1000] [--files 20000] [--rounds 3]

Measures initial backup, unchanged re-backup, re-backup after a 1 % mutation, full restore
(page cache dropped first when permitted; backups read the data set from page cache, the
same for every tool), repository size and each run's peak RSS (``os.wait4``), then prints
a table with the ratios fleetkeep/restic and fleetkeep/borg: medians over ``--rounds``
rounds (tools take turns in a rotating order), and each round's ratio.
``--survey-chunk-sizes`` instead measures dedup and chunk counts per FastCDC average size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _dataset

BENCH = Path(__file__).resolve().parent
DATA = BENCH / ".data"
WORK = BENCH / ".work"
PASSWORD = "bench-only-password"

_FLEETKEEP = """
import os, sys, time
from pathlib import Path
from fleetkeep.backup import Repository
from fleetkeep.backup.stores import FilesystemStore
op, repo_dir, dek_hex, arg, cache = sys.argv[1:6]
dek = bytes.fromhex(dek_hex)
store = FilesystemStore(repo_dir)
if op == "init":
    Repository.init(store, dek)
elif op == "backup":
    Repository.open(store, dek).backup([arg], device="bench", cache_dir=cache)
elif op == "restore":
    repo = Repository.open(store, dek)
    repo.restore(repo.list_snapshots()[-1], arg)
"""


@dataclass
class Run:
    seconds: float
    max_rss_kb: int
    cpu_seconds: float


@dataclass
class Results:
    runs: dict[str, Run] = field(default_factory=dict)
    repo_bytes: int = 0


def _run(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Run:
    # Bytecode is written on the first (untimed) run, as an installed package would have it.
    base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        env={**base, **(env or {})},
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"{' '.join(cmd[:3])}… failed ({proc.returncode}):\n{err[-3000:]}")
    if proc.stderr:
        proc.stderr.close()
    return Run(elapsed, usage.ru_maxrss, usage.ru_utime + usage.ru_stime)


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def warm_page_cache(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with p.open("rb") as f:
                while f.read(1 << 20):
                    pass


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def ensure_tools() -> None:
    missing = [
        pkg
        for tool, pkg in (("restic", "restic"), ("borg", "borgbackup"))
        if shutil.which(tool) is None
    ]
    if missing:
        print(f"installing {' '.join(missing)} with apt-get …", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


class Tool:
    name = ""

    def __init__(self, work: Path, data: Path) -> None:
        self.repo = work / f"{self.name}-repo"
        self.cache = work / f"{self.name}-cache"
        self.data = data

    def init(self) -> None:
        raise NotImplementedError

    def backup(self) -> Run:
        raise NotImplementedError

    def restore(self, target: Path) -> Run:
        raise NotImplementedError


class Fleetkeep(Tool):
    name = "fleetkeep"

    def __init__(self, work: Path, data: Path) -> None:
        super().__init__(work, data)
        self.dek = os.urandom(32).hex()

    def _cmd(self, op: str, arg: str) -> list[str]:
        return [
            sys.executable,
            "-c",
            _FLEETKEEP,
            op,
            str(self.repo),
            self.dek,
            arg,
            str(self.cache),
        ]

    def init(self) -> None:
        _run(self._cmd("init", ""))

    def backup(self) -> Run:
        return _run(self._cmd("backup", str(self.data)))

    def restore(self, target: Path) -> Run:
        return _run(self._cmd("restore", str(target)))


class Restic(Tool):
    name = "restic"

    def _env(self) -> dict[str, str]:
        return {
            "RESTIC_PASSWORD": PASSWORD,
            "RESTIC_REPOSITORY": str(self.repo),
            "RESTIC_CACHE_DIR": str(self.cache),
        }

    def init(self) -> None:
        _run(["restic", "init"], self._env())

    def backup(self) -> Run:
        return _run(["restic", "backup", "--quiet", str(self.data)], self._env())

    def restore(self, target: Path) -> Run:
        return _run(["restic", "restore", "latest", "--target", str(target)], self._env())


class Borg(Tool):
    name = "borg"

    def __init__(self, work: Path, data: Path) -> None:
        super().__init__(work, data)
        self.n = 0

    def _env(self) -> dict[str, str]:
        return {
            "BORG_PASSPHRASE": PASSWORD,
            "BORG_BASE_DIR": str(self.cache),
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        }

    def init(self) -> None:
        _run(["borg", "init", "--encryption=repokey-blake2", str(self.repo)], self._env())

    def backup(self) -> Run:
        self.n += 1
        return _run(["borg", "create", f"{self.repo}::b{self.n}", str(self.data)], self._env())

    def restore(self, target: Path) -> Run:
        target.mkdir(parents=True, exist_ok=True)
        return _run(["borg", "extract", f"{self.repo}::b{self.n}"], self._env(), cwd=target)


def _fmt_s(r: Run) -> str:
    return f"{r.seconds:8.2f}s"


def print_table(
    results: dict[str, Results], dataset: tuple[int, int], dropped: bool, rounds: int
) -> None:
    fk, rs, bg = results["fleetkeep"], results["restic"], results["borg"]
    print(
        f"\nmedians of {rounds} round(s); data set: {dataset[0]} files, "
        f"{dataset[1] / 1e6:.0f} MB; "
        "backups read it from page cache; "
        f"page cache {'dropped before each restore' if dropped else 'NOT dropped (no permission)'}"
        f"; load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    head = f"{'':22}{'fleetkeep':>12}{'restic':>12}{'borg':>12}{'fk/restic':>11}{'fk/borg':>9}"
    print(head)
    print("-" * len(head))
    for step in ("initial backup", "unchanged backup", "mutated backup", "full restore"):
        a, b, c = fk.runs[step], rs.runs[step], bg.runs[step]
        print(
            f"{step:22}{_fmt_s(a):>12}{_fmt_s(b):>12}{_fmt_s(c):>12}"
            f"{a.seconds / b.seconds:>11.2f}{a.seconds / c.seconds:>9.2f}"
        )
    print(
        f"{'repository size':22}{fk.repo_bytes / 1e6:>10.1f}MB{rs.repo_bytes / 1e6:>10.1f}MB"
        f"{bg.repo_bytes / 1e6:>10.1f}MB{fk.repo_bytes / rs.repo_bytes:>11.3f}"
        f"{fk.repo_bytes / bg.repo_bytes:>9.3f}"
    )
    print("CPU seconds (user + sys; less sensitive than wall time to other load on the machine)")
    for step in ("initial backup", "unchanged backup", "mutated backup", "full restore"):
        a, b, c = fk.runs[step], rs.runs[step], bg.runs[step]
        print(
            f"  {step:20}{a.cpu_seconds:>11.2f}s{b.cpu_seconds:>11.2f}s{c.cpu_seconds:>11.2f}s"
            f"{a.cpu_seconds / b.cpu_seconds:>11.2f}{a.cpu_seconds / c.cpu_seconds:>9.2f}"
        )
    peak = {n: max(r.max_rss_kb for r in res.runs.values()) for n, res in results.items()}
    # Peak RSS is the largest of any round, not a median.
    print(
        f"{'peak RSS (any step)':22}{peak['fleetkeep'] / 1024:>10.0f}MB"
        f"{peak['restic'] / 1024:>10.0f}MB{peak['borg'] / 1024:>10.0f}MB"
        f"{peak['fleetkeep'] / peak['restic']:>11.2f}{peak['fleetkeep'] / peak['borg']:>9.2f}"
    )
    print("\npeak RSS per step (MB):")
    for step in fk.runs:
        print(
            f"  {step:20}"
            + "".join(f"{results[n].runs[step].max_rss_kb / 1024:>10.0f}" for n in results)
        )


def _progress(tool: str, step: str, r: Run) -> None:
    print(
        f"{tool:10} {step:18} {r.seconds:7.2f}s  cpu {r.cpu_seconds:6.2f}s  "
        f"rss {r.max_rss_kb / 1024:.0f} MB  (load {os.getloadavg()[0]:.1f})",
        flush=True,
    )


STEPS = ("initial backup", "unchanged backup", "mutated backup", "full restore")


def one_round(
    pristine: Path, names: list[str], round_no: int
) -> tuple[dict[str, Results], tuple[int, int], bool]:
    """Every step for every tool on a fresh copy of the data set and fresh repositories, in
    a directory of the round's own. The tools take turns in a rotating order."""
    work = WORK / f"round-{round_no + 1}"
    work.mkdir(parents=True)
    data = work / "data"
    subprocess.run(["cp", "-a", str(pristine), str(data)], check=True)
    (data / ".complete").unlink()
    dataset = _dataset.tree_bytes(data)
    by_name = {t.name: t for t in (Fleetkeep, Restic, Borg)}
    shift = round_no % len(names)
    order = names[shift:] + names[:shift]
    tools = [by_name[n](work, data) for n in order]
    results = {t.name: Results() for t in tools}
    for t in tools:
        t.init()
    # Backups read a data set in page cache (the same state for every tool: the engines are
    # compared, not the disk); restores start with the page cache dropped.
    warm_page_cache(data)
    for step in ("initial backup", "unchanged backup"):
        for t in tools:
            results[t.name].runs[step] = r = t.backup()
            _progress(t.name, step, r)
    _dataset.mutate(data)
    for t in tools:
        results[t.name].runs["mutated backup"] = r = t.backup()
        _progress(t.name, "mutated backup", r)
    dropped = False
    for t in tools:
        target = work / f"{t.name}-restore"
        dropped = drop_caches()
        results[t.name].runs["full restore"] = r = t.restore(target)
        _progress(t.name, "full restore", r)
        restored = next(p for p in target.rglob("data") if p.is_dir() and (p / "proj00").exists())
        check = subprocess.run(
            ["diff", "-rq", "--no-dereference", str(data), str(restored)],
            capture_output=True,
            text=True,
        )
        if check.returncode != 0:
            raise SystemExit(f"{t.name} restore differs:\n{check.stdout[:2000]}")
        results[t.name].repo_bytes = du(t.repo)
    return {n: results[n] for n in names}, dataset, dropped


def median_results(rounds: list[dict[str, Results]]) -> dict[str, Results]:
    """Per tool and step: the median wall and CPU time over the rounds, the largest RSS."""
    out: dict[str, Results] = {}
    for name in rounds[0]:
        res = out[name] = Results()
        for step in STEPS:
            runs = [r[name].runs[step] for r in rounds]
            res.runs[step] = Run(
                statistics.median(r.seconds for r in runs),
                max(r.max_rss_kb for r in runs),
                statistics.median(r.cpu_seconds for r in runs),
            )
        res.repo_bytes = int(statistics.median(r[name].repo_bytes for r in rounds))
    return out


def print_spread(rounds: list[dict[str, Results]]) -> None:
    print("\nfleetkeep/restic wall time in each round (the table: the ratio of the medians):")
    for step in STEPS:
        ratios = [
            r["fleetkeep"].runs[step].seconds / r["restic"].runs[step].seconds for r in rounds
        ]
        print(f"  {step:20}" + "".join(f"{x:>7.2f}" for x in ratios))


def benchmark(size_mb: int, files: int, only: list[str], rounds: int) -> None:
    ensure_tools()
    pristine = DATA / f"pristine-{size_mb}mb-{files}f"
    if not (pristine / ".complete").exists():
        print(f"generating {size_mb} MB / {files} files in {pristine} …", flush=True)
        _dataset.generate(pristine, size_mb=size_mb, files=files)
        (pristine / ".complete").touch()
    names = [n for n in ("fleetkeep", "restic", "borg") if n in only]
    # Nothing is deleted while tools are timed: on ext4 without a journal (this machine's
    # disk), creating files within a minute of deleting many others makes the kernel skip the
    # freed inodes one by one (``recently_deleted``): a restore run within a minute of the
    # previous round's deletions spent a quarter of its CPU there (perf). So each round works
    # in a directory of its own (about 6 GB each) and all are deleted at the end, or, left
    # over from an interrupted run, at the start followed by a minute's wait.
    if WORK.exists():
        shutil.rmtree(WORK)
        print("deleted an earlier run's work directory; waiting 65 s …", flush=True)
        os.sync()
        time.sleep(65)
    all_rounds = []
    try:
        for i in range(rounds):
            print(f"-- round {i + 1} of {rounds}", flush=True)
            results, dataset, dropped = one_round(pristine, names, i)
            all_rounds.append(results)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    results = median_results(all_rounds)
    if len(names) == 3:
        print_table(results, dataset, dropped, rounds)
        print_spread(all_rounds)
    else:
        for name, res in results.items():
            print(
                name,
                {k: round(v.seconds, 2) for k, v in res.runs.items()},
                f"{res.repo_bytes / 1e6:.1f} MB",
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1000)
    parser.add_argument(
        "--files",
        type=int,
        default=None,
        help="number of files (default: 20 per MB, at most 20,000)",
    )
    parser.add_argument("--only", default="fleetkeep,restic,borg")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of every step (medians are reported; this machine's speed drifts by "
        "10-20 %% between minutes, so one round is not enough to compare tools)",
    )
    parser.add_argument("--survey-chunk-sizes", action="store_true")
    args = parser.parse_args()
    files = args.files or min(20_000, max(100, args.size_mb * 20))
    if args.survey_chunk_sizes:
        import _chunk_survey

        _chunk_survey.survey(DATA, args.size_mb, files)
    else:
        benchmark(args.size_mb, files, args.only.split(","), args.rounds)


if __name__ == "__main__":
    main()
