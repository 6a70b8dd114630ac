"""Mutation testing: how many small, realistic bugs does the default suite catch?

    make mutation                                   # every module below
    make mutation MODULE=siammae_jax/datasets/davis.py  # one module
    python benchmarks/mutation.py --module siammae_jax/datasets/vip.py --budget 300

Each module whose bugs change a published number or lose data is mutated by
mutmut (3.x) in a scratch copy of the checkout (``build/mutation/<module>``;
the checkout itself is never modified) and checked against its own fast test
files only. mutmut runs, for each mutant, just the tests that execute the
mutated function, in workers forked from a server that has collected the tests
but run none of them, so no JAX compilation cache leaks from the clean run into
a mutant's run. A persistent JAX compilation cache (keyed by the compiled
program, so a mutant that changes the computation always compiles afresh)
spares the recompiles of programs a mutant leaves unchanged.

mutmut's per-mutant test selection (the tests that executed the mutated
function in the clean run) misses tests whose model was compiled by an earlier
test's session fixture; so every mutant that survives is run once more, alone,
against all of the module's test files (``MUTANT_UNDER_TEST``, stopping at the
first failure), and counted as "killed on recheck" when they fail.
``--recheck_only`` does just that on the scratch copies of an earlier run.

Every module has a time budget; mutants not reached within it are reported as
"not run", never as killed. Surviving mutants are matched against
``benchmarks/mutation_equivalent.toml`` (module, function, the line before and
after, and why the mutant is equivalent or harmless); the others are written,
with their diffs, to ``build/mutation/report.md``, beside a per-module table
(the figures BENCHMARKS.md "Test strength" quotes).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT_FILE = ROOT / "benchmarks" / "mutation_equivalent.toml"

# Module -> its own fast test files (the default suite's; no slow marker).
MODULES: dict[str, tuple[str, ...]] = {
    "siammae_jax/models/siammae.py": ("tests/test_siammae.py",),
    "siammae_jax/train/optim.py": ("tests/test_optim.py",),
    "siammae_jax/train/step.py": ("tests/test_train_step.py",),
    "siammae_jax/train/checkpoint.py": ("tests/test_checkpoint.py",),
    "siammae_jax/data/pairs.py": ("tests/test_pairs.py",),
    "siammae_jax/eval/propagation.py": ("tests/test_propagation.py",),
    "siammae_jax/datasets/davis.py": (
        "tests/test_davis.py",
        "tests/test_eval_runners.py",
    ),
    "siammae_jax/datasets/davis_score.py": (
        "tests/test_davis.py",
        "tests/test_eval_runners.py",
    ),
    "siammae_jax/datasets/jhmdb.py": (
        "tests/test_jhmdb.py",
        "tests/test_jhmdb_vip.py",
        "tests/test_eval_runners.py",
    ),
    "siammae_jax/datasets/vip.py": (
        "tests/test_jhmdb_vip.py",
        "tests/test_eval_runners.py",
    ),
}

# `mutmut results --all true` lines: "    <name>: <status>".
_RESULT = re.compile(r"^\s*(\S+__mutmut_\d+): (.+)$")


@dataclasses.dataclass
class Mutant:
    name: str
    status: str  # killed, survived, not checked, no tests, timeout, ...
    function: str = ""
    before: str = ""
    after: str = ""
    diff: str = ""
    reason: str = ""  # set when listed as equivalent / harmless


@dataclasses.dataclass
class ModuleResult:
    module: str
    tests: tuple[str, ...]
    seconds: float
    mutants: list[Mutant]

    def count(self, *statuses: str) -> int:
        return sum(m.status in statuses for m in self.mutants)

    @property
    def equivalent(self) -> list[Mutant]:
        return [m for m in self.mutants if m.status == "survived" and m.reason]

    @property
    def surviving(self) -> list[Mutant]:
        return [m for m in self.mutants if m.status == "survived" and not m.reason]

    @property
    def not_run(self) -> int:
        return self.count("not checked")

    @property
    def killed(self) -> int:
        # A mutant that hangs or crashes the interpreter is caught too (the
        # table shows how many timed out).
        return self.count("killed", "timeout", "segfault", RECHECKED)

    @property
    def rate(self) -> float:
        """Killed over the non-equivalent mutants that were run."""
        judged = self.killed + len(self.surviving) + self.count("no tests")
        return self.killed / judged if judged else float("nan")


def function_name(mutant: str) -> str:
    """``pkg.mod.xǁClsǁmeth__mutmut_3`` -> ``Cls.meth``; ``x_f__mutmut_1`` -> ``f``."""
    local = mutant.rsplit(".", 1)[-1].rsplit("__mutmut_", 1)[0]
    if local.startswith("xǁ"):
        return ".".join(part for part in local[2:].split("ǁ") if part)
    return local[2:]


def changed_lines(diff: str) -> tuple[str, str]:
    """The removed and added source lines of a ``mutmut show`` diff, stripped."""
    body = [x for x in diff.splitlines() if not x.startswith(("---", "+++"))]
    minus = [x[1:].strip() for x in body if x.startswith("-")]
    plus = [x[1:].strip() for x in body if x.startswith("+")]
    return " / ".join(minus), " / ".join(plus)


def load_equivalent(path: Path = EQUIVALENT_FILE) -> list[dict]:
    """Entries of the equivalent-mutant list; each names what it matches."""
    if not path.exists():
        return []
    entries = tomllib.loads(path.read_text("utf-8")).get("mutant", [])
    for i, e in enumerate(entries):
        missing = {"module", "function", "before", "after", "reason"} - set(e)
        if missing:
            raise ValueError(f"{path}: mutant entry {i} lacks {sorted(missing)}")
    return entries


def scratch_copy(module: str, out: Path) -> Path:
    """A copy of the checkout's files (tracked and untracked, not ignored)."""
    work = out / module.replace("/", "__").removesuffix(".py")
    shutil.rmtree(work, ignore_errors=True)
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for rel in filter(None, listed):
        src = ROOT / rel.decode()
        if src.is_file():
            dst = work / rel.decode()
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    return work


def write_config(work: Path, module: str, tests: tuple[str, ...]) -> None:
    """mutmut reads its settings from setup.cfg when pyproject has none."""
    lines = ["[mutmut]", "source_paths=siammae_jax", f"only_mutate={module}"]
    lines.append("pytest_add_cli_args_test_selection=")
    lines += [f"    {t}" for t in tests]
    # Workers fork from a server that only collected the tests (see docstring).
    lines += ["process_isolation=forkserver", "forkserver_warmup=collect"]
    # mutmut's timeout is 15x the test's time in the clean run plus a constant. A
    # worker running one test compiles what the clean run had compiled for an
    # earlier test (session fixtures), so the constant covers a compile.
    lines.append("timeout_constant=60")
    # Tests import configs/, benchmarks/, tpu/...: copy every top-level entry.
    extra = sorted(
        p.name for p in work.iterdir() if p.name not in ("siammae_jax", "tests")
    )
    lines.append("also_copy=")
    lines += [f"    {name}" for name in extra]
    (work / "setup.cfg").write_text("\n".join(lines) + "\n")


def _jax_cache_env(work: Path) -> dict[str, str]:
    """The environment with a persistent JAX compilation cache beside ``work``."""
    env = dict(os.environ)
    env["JAX_COMPILATION_CACHE_DIR"] = str(work.parent / "jax_cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return env


def run_mutmut(work: Path, budget: float, children: int) -> float:
    """``mutmut run`` until it finishes or the budget runs out; wall seconds."""
    mutmut = Path(sys.executable).with_name("mutmut")
    env = _jax_cache_env(work)
    start = time.monotonic()
    with open(work / "mutmut.log", "wb") as log:
        proc = subprocess.Popen(
            [str(mutmut), "run", "--max-children", str(children)],
            cwd=work,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the budget ends the forkserver's workers too
        )
        try:
            proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return time.monotonic() - start
    if proc.returncode:
        tail = (work / "mutmut.log").read_text(errors="replace").replace("\r", "\n")
        raise RuntimeError(
            f"mutmut stopped with exit code {proc.returncode} in {work}; the end of "
            f"its log:\n{tail[-2000:]}"
        )
    return time.monotonic() - start


def collect(work: Path, module: str) -> list[Mutant]:
    """Every mutant of ``module`` with its status; diffs of the survivors."""
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    listing = subprocess.run(
        [mutmut, "results", "--all", "true"],
        cwd=work,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    prefix = module.removesuffix(".py").replace("/", ".") + "."
    mutants = []
    for line in listing.splitlines():
        match = _RESULT.match(line)
        if match and match[1].startswith(prefix):
            mutants.append(Mutant(match[1], match[2].strip()))
    if not mutants:
        raise RuntimeError(
            f"mutmut produced no mutant of {module}: see {work}/mutmut.log"
        )
    for m in mutants:
        m.function = function_name(m.name)
        if m.status == "survived":
            m.diff = subprocess.run(
                [mutmut, "show", m.name],
                cwd=work,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            m.before, m.after = changed_lines(m.diff)
    return mutants


RECHECKED = "killed on recheck"


def _recheck_one(work: Path, tests: tuple[str, ...], name: str, timeout: float) -> bool:
    """True when the module's test files fail with mutant ``name`` active."""
    env = _jax_cache_env(work)
    env["MUTANT_UNDER_TEST"] = name
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    try:
        proc = subprocess.run(
            [*command, *tests], cwd=work / "mutants", env=env,
            capture_output=True, timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return True  # A hang is caught too (as mutmut's "timeout").
    return proc.returncode not in (0, 5)  # 5: no tests collected


def recheck(
    work: Path, result: ModuleResult, children: int, timeout: float = 900
) -> int:
    """Runs every surviving mutant alone against all the module's test files;
    marks those they catch. Returns how many were caught."""
    import concurrent.futures

    survivors = [m for m in result.mutants if m.status == "survived"]
    with concurrent.futures.ThreadPoolExecutor(max(1, children)) as pool:
        caught = list(
            pool.map(
                lambda m: _recheck_one(work, result.tests, m.name, timeout), survivors
            )
        )
    for m, hit in zip(survivors, caught, strict=True):
        if hit:
            m.status, m.reason = RECHECKED, ""
    return sum(caught)


def mark_equivalent(result: ModuleResult, entries: list[dict]) -> list[dict]:
    """Gives listed survivors their reason; returns the entries that matched none."""
    used = set()
    for m in result.mutants:
        if m.status != "survived":
            continue
        for i, e in enumerate(entries):
            if (e["module"], e["function"]) == (result.module, m.function) and (
                e["before"].strip(),
                e["after"].strip(),
            ) == (m.before, m.after):
                m.reason = f"{e.get('kind', 'equivalent')}: {e['reason']}"
                used.add(i)
                break
    return [
        e
        for i, e in enumerate(entries)
        if e["module"] == result.module and i not in used
    ]


def table(results: list[ModuleResult]) -> str:
    rows = [
        "| module | test files | mutants | killed | of which on recheck "
        "| equivalent / harmless | surviving | not run (budget) "
        "| killed of non-equivalent | of which timed out | wall |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rows.append(
            f"| `{r.module}` | {', '.join(f'`{t}`' for t in r.tests)} | {len(r.mutants)} "
            f"| {r.killed} | {r.count(RECHECKED)} | {len(r.equivalent)} "
            f"| {len(r.surviving)} | {r.not_run} "
            f"| {r.rate:.1%} | {r.count('timeout')} | {r.seconds / 60:.1f} min |"
        )
    return "\n".join(rows)


def report(results: list[ModuleResult], stale: list[dict], command: str) -> str:
    lines = [
        "# Mutation report",
        "",
        f"`{command}`, {datetime.date.today().isoformat()}, mutmut "
        f"{_mutmut_version()}.",
        "",
        table(results),
        "",
    ]
    for r in results:
        lines += [f"## `{r.module}`: {len(r.surviving)} surviving", ""]
        for m in r.surviving:
            lines += [f"### {m.name}", "", "```diff", m.diff.strip(), "```", ""]
        if r.equivalent:
            lines += ["Listed as equivalent or harmless:", ""]
            lines += [
                f"- `{m.function}`: `{m.after}` ({m.reason})" for m in r.equivalent
            ]
            lines.append("")
    if stale:
        lines += ["## Entries of mutation_equivalent.toml that matched no survivor", ""]
        lines += [f"- `{e['module']}` `{e['function']}`: `{e['after']}`" for e in stale]
    return "\n".join(lines) + "\n"


def _mutmut_version() -> str:
    from importlib.metadata import version

    return version("mutmut")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--module",
        action="append",
        help="module path (repeatable); default: every module of MODULES",
    )
    parser.add_argument("--budget", type=float, default=1200, help="seconds per module")
    parser.add_argument("--children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "mutation")
    parser.add_argument(
        "--recheck_only",
        action="store_true",
        help="recheck the survivors of an earlier run's scratch copies (no mutmut run)",
    )
    args = parser.parse_args(argv)
    args.out = args.out.resolve()  # mutmut runs its workers in another folder
    modules = args.module or list(MODULES)
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; choose from {list(MODULES)}")
    if not Path(sys.executable).with_name("mutmut").exists():
        parser.error("mutmut is not installed: pip install -e '.[mutation]'")
    entries = load_equivalent()
    results, stale = [], []
    for module in modules:
        tests = MODULES[module]
        print(f"{module}: mutating against {', '.join(tests)} ...", flush=True)
        work = args.out / module.replace("/", "__").removesuffix(".py")
        seconds = 0.0
        if not args.recheck_only:
            work = scratch_copy(module, args.out)
            write_config(work, module, tests)
            seconds = run_mutmut(work, args.budget, args.children)
        result = ModuleResult(module, tests, seconds, collect(work, module))
        start = time.monotonic()
        caught = recheck(work, result, args.children)
        result.seconds += time.monotonic() - start
        print(f"  recheck: {caught} more survivors caught", flush=True)
        stale += mark_equivalent(result, entries)
        results.append(result)
        print(
            f"  {len(result.mutants)} mutants, {result.killed} killed, "
            f"{len(result.equivalent)} equivalent, {len(result.surviving)} surviving, "
            f"{result.not_run} not run; {result.rate:.1%} in {seconds / 60:.1f} min",
            flush=True,
        )
    command = "python benchmarks/mutation.py " + " ".join(argv or sys.argv[1:])
    text = report(results, stale, command.strip())
    path = args.out / "report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(table(results))
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
