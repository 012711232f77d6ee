"""Benches of two commits in one invocation: the base revision against the current tree, runs alternated.

    python bench/compare.py --base REV [--benches train_speed,ingest_speed,score_speed,serve_latency]
        [--repeat N] [--train-args "--pairs 500000 --threads 1"] [--ingest-args ...] [--score-args ...]
        [--serve-args ...] [--new REV2]

``REV`` is checked out in a temporary ``git worktree`` (removed afterwards). Each bench script runs
from that worktree and from this tree (uncommitted changes included; or ``--new REV2``'s worktree) in
turn, base then new, ``--repeat`` times: alternating spreads the machine's noise over both sides. Each
side imports its own tree's package (``PYTHONPATH``), whatever is installed. The ``name=value`` lines
the benches print are parsed; for every numeric figure both sides printed, three lines:
``bench.name_base=``, ``bench.name_new=`` (medians over the repeats) and ``bench.name_ratio=``
(new / base). A bench missing at the base prints ``bench.missing=base``; one that fails prints
``bench.failed_base=`` (or ``_new``) with its exit status. Pin the whole invocation to cores with
``taskset``: the children inherit it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

#: Bench name -> the option that passes it extra arguments.
BENCHES = {"train_speed": "train", "ingest_speed": "ingest", "score_speed": "score", "serve_latency": "serve"}
HERE = Path(__file__).resolve().parents[1]


def parse_figures(text: str) -> dict[str, float]:
    """The numeric ``name=value`` lines of a bench's output (``1,234`` reads as 1234; a repeated name: the
    last one). Comments (``#``) and lines whose value is not a number are skipped."""
    out = {}
    for line in text.splitlines():
        name, sep, value = line.strip().partition("=")
        if not sep or not name or name.startswith("#") or " " in name:
            continue
        try:
            out[name] = float(value.replace(",", ""))
        except ValueError:
            continue
    return out


def summarise(bench: str, base: Sequence[Mapping[str, float]], new: Sequence[Mapping[str, float]]) -> list[str]:
    """The ``bench.name_base/_new/_ratio`` lines of figures both sides printed (medians over the runs)."""
    lines = []
    names = [n for n in new[0] if n in base[0]] if base and new else []
    for name in names:
        b = statistics.median(r[name] for r in base if name in r)
        n = statistics.median(r[name] for r in new if name in r)
        ratio = n / b if b else float("nan")
        lines += [f"{bench}.{name}_base={b:.10g}", f"{bench}.{name}_new={n:.10g}", f"{bench}.{name}_ratio={ratio:.3f}"]
    return lines


def run_bench(tree: Path, bench: str, args: Sequence[str], shim: Path) -> tuple[int, str]:
    """Run ``bench/<bench>.py`` of ``tree`` with that tree's package first on the path; (exit status, stdout)."""
    path = [str(tree), str(shim), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}
    cmd = [sys.executable, str(tree / "bench" / f"{bench}.py"), *args]
    print("# " + shlex.join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, text=True, check=False)
    return proc.returncode, proc.stdout


def _shim(tree: Path, folder: Path) -> Path:
    """A folder whose ``ipinsights_jobs`` is ``tree``'s ``jobs/`` (as the installed package maps it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ipinsights_jobs").symlink_to(tree / "jobs", target_is_directory=True)
    return folder


def compare(
    trees: Mapping[str, Path], benches: Iterable[str], repeat: int, extra: Mapping[str, list[str]], tmp: Path
) -> None:
    """Run every bench on both trees (``base``, ``new``), alternating; print the summary lines as each bench ends."""
    base_tree = trees["base"]
    shims = {side: _shim(tree, tmp / f"shim-{side}") for side, tree in trees.items()}
    for bench in benches:
        if not (base_tree / "bench" / f"{bench}.py").exists():
            print(f"{bench}.missing=base", flush=True)
            continue
        runs: dict[str, list[dict[str, float]]] = {"base": [], "new": []}
        failed = False
        for _ in range(repeat):
            for side, tree in trees.items():
                rc, out = run_bench(tree, bench, extra.get(bench, []), shims[side])
                if rc:
                    print(f"{bench}.failed_{side}={rc}", flush=True)
                    failed = True
                    break
                runs[side].append(parse_figures(out))
                figures = " ".join(f"{k}={v:.10g}" for k, v in runs[side][-1].items())
                print(f"# {bench} {side}: {figures}", file=sys.stderr)
            if failed:
                break
        if not failed:
            print("\n".join(summarise(bench, runs["base"], runs["new"])), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the revision to compare against (any git rev)")
    ap.add_argument("--new", default=None, help="a revision instead of this tree (bisecting two commits)")
    ap.add_argument("--benches", default=",".join(BENCHES), help="comma-separated bench names")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each side, alternated")
    for bench, opt in BENCHES.items():
        ap.add_argument(f"--{opt}-args", default="", help=f"extra arguments of {bench}.py (one string)")
    args = ap.parse_args(argv)
    benches = [b for b in args.benches.split(",") if b]
    unknown = [b for b in benches if b not in BENCHES]
    if unknown:
        ap.error(f"unknown benches {unknown}; known: {', '.join(BENCHES)}")
    extra = {b: shlex.split(getattr(args, f"{opt}_args")) for b, opt in BENCHES.items()}
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        revs = {"base": args.base, "new": args.new}
        trees = {side: Path(tmp) / side if rev else HERE for side, rev in revs.items()}
        try:
            for side, rev in revs.items():
                if rev:
                    git = ["git", "-C", str(HERE), "worktree", "add", "--detach", "-q", str(trees[side]), rev]
                    subprocess.run(git, check=True)
                    print(f"# {side} {rev}: {_describe(trees[side])}", file=sys.stderr)
            compare(trees, benches, args.repeat, extra, Path(tmp))
        finally:
            for side, rev in revs.items():
                if rev and trees[side].exists():
                    git = ["git", "-C", str(HERE), "worktree", "remove", "--force", str(trees[side])]
                    subprocess.run(git, check=False)


def _describe(tree: Path) -> str:
    """``hash subject`` of the commit checked out in ``tree``."""
    out = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    return out.stdout.strip()[:100]


if __name__ == "__main__":
    main()
