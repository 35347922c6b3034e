"""How long the pre-commit hook takes on a one-function change in a repository of 1,000
Python files: the whole `telemetry-inject-hook` process, as pre-commit starts it.

    python bench/precommit_speed.py [--files 1000] [--runs 7] [--keep DIR]

Figures (median of --runs runs each, wall clock):

* warm: the same change again with the cache filled (the file memo answers; nothing is
  parsed). Target: at most 0.5 s. This is the figure PASS/FAIL is about.
* fresh edit: a function edited for the first time, the cache filled by earlier runs (the
  changed function gets a new, validated insertion script).
* cold: no cache folder at all.
* python -c pass: the interpreter's own start, for scale.

The hook runs with its bytecode cached (``PYTHONPYCACHEPREFIX`` in a temporary folder), as
an installed package has it; the warm figure is also given without bytecode when the
environment sets ``PYTHONDONTWRITEBYTECODE`` (every module compiled from source, each run).

It also runs the hook once under ``python -X importtime`` and says whether litellm (or any
other heavy module) was imported.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 0.5
HOOK = Path(sys.executable).with_name("telemetry-inject-hook")


def module_source(package: int, module: int, functions: int = 12) -> str:
    parts = [f'"""Module {module} of package {package}."""\n\nimport math\n']
    for index in range(functions):
        parts.append(f"\n\ndef func_{index}(value, factor={index + 1}):\n"
                     f'    """Scale and shift."""\n'
                     f"    scaled = value * factor + {module}\n"
                     f"    if scaled > {index * 10}:\n"
                     f"        return math.sqrt(scaled)\n"
                     f"    return scaled - {package}\n")
    parts.append(f"\n\nclass Model{module}:\n    def __init__(self, size):\n        self.size = size\n\n"
                 f"    def area(self):\n        return self.size * self.size\n")
    return "".join(parts)


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


PER_PACKAGE = 50


def make_repository(root: Path, files: int) -> tuple[Path, int, int]:
    """The repository, and the file the benchmark changes (with its package and module numbers)."""
    per_package = PER_PACKAGE
    for number in range(files):
        package, module = divmod(number, per_package)
        folder = root / "src" / f"pkg{package}"
        if not (folder / "__init__.py").exists():
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "__init__.py").write_text("")
        (folder / f"mod{module}.py").write_text(module_source(package, module))
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "commit", "-q", "-m", "base",
        "--no-verify")
    package, module = divmod(files // 2, per_package)
    return root / "src" / f"pkg{package}" / f"mod{module}.py", package, module


def run_hook(root: Path, target: Path, env: dict[str, str]) -> tuple[float, int, str]:
    started = time.perf_counter()
    done = subprocess.run([str(HOOK), str(target.relative_to(root))], cwd=root, capture_output=True, env=env)
    elapsed = time.perf_counter() - started
    return elapsed, done.returncode, (done.stdout + done.stderr).decode()


def stage_change(root: Path, target: Path, text: str) -> None:
    target.write_text(text)
    git(root, "add", str(target.relative_to(root)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--keep", type=Path, help="build the repository here and keep it")
    args = parser.parse_args(argv)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("TELEMETRY_INJECT_", "GIT_"))}
    pycache = tempfile.mkdtemp(prefix="precommit-speed-pycache-")
    env = {k: v for k, v in inherited.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = pycache
    root = args.keep or Path(tempfile.mkdtemp(prefix="precommit-speed-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        target, package, module = make_repository(root, args.files)
        shown = target.relative_to(root).as_posix()
        print(f"repository: {args.files} Python files, {args.files * 14} functions, "
              f"built in {time.perf_counter() - started:.1f} s ({root})")
        original = target.read_text()
        one_change = original.replace(f"scaled = value * factor + {module}\n",
                                      f"scaled = value * factor + {module + 1000}\n", 1)
        assert one_change != original

        stage_change(root, target, one_change)
        run_hook(root, target, env)  # writes the bytecode cache
        # Cold: no cache at all, each run.
        cold: list[float] = []
        for _ in range(args.runs):
            shutil.rmtree(root / ".telemetry_cache", ignore_errors=True)
            stage_change(root, target, one_change)
            elapsed, code, out = run_hook(root, target, env)
            assert code == 1 and f"Instrumented {shown}: 1 function" in out, out
            cold.append(elapsed)
        git(root, "add", "-A")  # the vendored module, as the user would after the first run
        git(root, "reset", "-q", "--", str(target.relative_to(root)))

        # Warm: the same staged change again; the file memo answers.
        warm: list[float] = []
        for _ in range(args.runs):
            stage_change(root, target, one_change)
            elapsed, code, out = run_hook(root, target, env)
            assert code == 1 and f"Instrumented {shown}: 1 function" in out, out
            warm.append(elapsed)

        no_bytecode: list[float] = []
        if inherited.get("PYTHONDONTWRITEBYTECODE"):
            for _ in range(args.runs):
                stage_change(root, target, one_change)
                no_bytecode.append(run_hook(root, target, inherited)[0])

        # Fresh edit: another function changed each time, with the cache filled.
        fresh: list[float] = []
        for run in range(args.runs):
            edited = original.replace(f"return scaled - {package}\n", f"return scaled - {package + run + 1000}\n", 1)
            stage_change(root, target, edited)
            elapsed, code, out = run_hook(root, target, env)
            assert code == 1 and "1 function" in out, out
            fresh.append(elapsed)

        python: list[float] = []
        for _ in range(args.runs):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            python.append(time.perf_counter() - started)

        stage_change(root, target, one_change)
        traced = subprocess.run([sys.executable, "-X", "importtime", "-m", "pytest_telemetry_inject.precommit",
                                 str(target.relative_to(root))], cwd=root, capture_output=True, env=env, text=True)
        imported = [line.rsplit("|", 1)[-1].strip() for line in traced.stderr.splitlines()
                    if line.startswith("import time:") and "|" in line]
        heavy = sorted({name.split(".")[0] for name in imported} & {"litellm", "openai", "opentelemetry", "pytest"})

        median = statistics.median(warm)
        print(f"warm (memo hit), median of {args.runs}: {median:.3f} s  "
              f"(min {min(warm):.3f}, max {max(warm):.3f})  target <= {TARGET_S:.1f} s: "
              f"{'PASS' if median <= TARGET_S else 'FAIL'}")
        print(f"fresh edit (new script), median:      {statistics.median(fresh):.3f} s  "
              f"(min {min(fresh):.3f}, max {max(fresh):.3f})")
        print(f"cold (no cache), median:              {statistics.median(cold):.3f} s  "
              f"(min {min(cold):.3f}, max {max(cold):.3f})")
        if no_bytecode:
            print(f"warm without bytecode cache, median:  {statistics.median(no_bytecode):.3f} s  "
                  f"(PYTHONDONTWRITEBYTECODE is set here: every module compiled each run)")
        print(f"python -c pass, median:               {statistics.median(python):.3f} s")
        print(f"modules imported by the hook: {len(imported)}; litellm imported: "
              f"{'YES' if 'litellm' in heavy else 'no'}; heavy modules: {', '.join(heavy) or 'none'}")
        return 0 if median <= TARGET_S and not heavy else 1
    finally:
        shutil.rmtree(pycache, ignore_errors=True)
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
