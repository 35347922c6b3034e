"""What a model answers reaches no source file unless it is telemetry: ``telemetry-inject
--traditional`` through the real command line (a subprocess), litellm's real HTTP path,
and a local OpenAI-compatible server (``tests/llm/fakellm.py``) that answers a hostile
insertion first and valid telemetry after it.

For each hostile answer: the payload lands in no written file, the marker file it would
create never appears (the written module is imported and run to make sure), the command
reports the refusal in one line, the reason went back to the model, and the valid answer
that follows is accepted (so the check does not simply refuse everything).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "llm"))
from fakellm import KEY, FakeLLM, Reply, openai_env  # noqa: E402

from pytest_telemetry_inject.llm.traditional import MARKER, strip_marked  # noqa: E402

pytestmark = pytest.mark.skipif(importlib.util.find_spec("litellm") is None, reason="litellm is not installed")

CLI = [sys.executable, "-m", "pytest_telemetry_inject.cli"]
CART = '''"""Cart helpers."""
from __future__ import annotations


def total(items):
    """The sum of the items."""
    s = 0
    for item in items:
        s += item
    return s
'''
VALID = [  # after which original line, the text
    (2, "import logging"), (2, "import time"),
    (6, "    _t0 = time.perf_counter()"),
    (9, "    logging.getLogger(__name__).info('total took %.6f s', time.perf_counter() - _t0)"),
]


def hostile(marker: Path) -> dict[str, tuple[list[tuple[int, str]], str]]:
    """name -> (insertions, what the one-line refusal says)."""
    touch = f"__import__('os').system('touch {marker}')"
    return {
        "an os.system call": ([(6, f"    {touch}")], "the name '__import__' is not allowed"),
        "above the module docstring": ([(0, "import logging")], "goes before the module's docstring"),
        "above the function docstring": ([(5, "    import logging")], "goes before the docstring of total"),
        "before from __future__": ([(1, "import time")], "goes before the `from __future__` imports"),
        "open() disguised as a log line": (
            [(2, "import logging"), (6, "    logging.getLogger(__name__).info(open('/etc/passwd').read())")],
            "a log call's first argument is a string or an f-string"),
        "open() as a log argument": (
            [(2, "import logging"), (6, f"    logging.getLogger(__name__).info('%s', open('{marker}', 'w'))")],
            "'open' is not bound"),
        "exec": ([(6, f"    exec({touch!r})")], "'exec' is not bound"),
        "eval as a timer": ([(6, f"    _t0 = eval({touch!r})")], "'eval' is not bound"),
        "a dunder chain": (
            [(6, "    _t0 = ().__class__.__base__.__subclasses__()[-1].__init__.__globals__['sys']")],
            "is not allowed"),
    }


def answer(insertions: list[tuple[int, str]]) -> Reply:
    return Reply(json.dumps([{"after_line": line, "text": f"{text}  # {MARKER}"} for line, text in insertions]))


def environment(tmp_path: Path, fake: FakeLLM, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LLM_", "OPENAI_", "OLLAMA_", "DEBUG_TRACE", "PYTHON", "LITELLM_"))}
    return {**env, "XDG_CACHE_HOME": str(tmp_path / "xdg"), **openai_env(fake, LLM_REFLECTION_THRESHOLD="9"), **extra}


def project(tmp_path: Path, name: str, text: str) -> Path:
    root = tmp_path / "project"
    (root / "src").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'shop'\n")
    (root / "src" / name).write_text(text)
    return root


def every_text(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


CASES = sorted(hostile(Path("/m")))


@pytest.mark.parametrize("case", CASES)
def test_a_hostile_python_answer_is_refused_and_valid_telemetry_after_it_is_accepted(case: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    insertions, expected = hostile(marker)[case]
    root = project(tmp_path, "cart.py", CART)
    with FakeLLM([answer(insertions), answer(VALID)]) as fake:
        done = subprocess.run(CLI + ["--traditional", "src", "-o", "out"], capture_output=True, text=True,
                              env=environment(tmp_path, fake), cwd=root, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 instrumented" in done.stdout
    # The refusal: one line, with its reason; and the reason went back to the model.
    refusals = [line for line in done.stderr.splitlines() if "refused" in line]
    assert len(refusals) == 1, done.stderr
    assert refusals[0].startswith("telemetry-inject: src/cart.py: answer 1 refused: ") and expected in refusals[0]
    assert len(fake.chat_requests) == 2 and expected in fake.chat_requests[1].prompt
    # What was written is the valid answer: the original plus exactly its four lines.
    written = (root / "out" / "cart.py").read_text()
    assert strip_marked(written) == CART
    assert [line.split("  #")[0] for line in written.splitlines() if MARKER in line] == [t for _, t in VALID]
    for payload in ("system(", "passwd", "exec(", "eval(", "__class__", "open("):
        assert payload not in every_text(root)
    # Run what was written: the telemetry logs, the function works, nothing else happens.
    code = ("import logging, cart\nlogging.basicConfig(level=logging.INFO)\n"
            "print(cart.total([1, 2, 3]), cart.__doc__, cart.total.__doc__)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root / "out",
                         timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "6 Cart helpers. The sum of the items." and "total took" in run.stderr
    assert not marker.exists()
    assert (root / "src" / "cart.py").read_text() == CART and KEY not in done.stdout + done.stderr


JS = """export function total(items) {
  let sum = 0;
  for (const item of items) sum += item;
  return sum;
}
"""


def test_a_hostile_javascript_answer_is_refused_and_valid_telemetry_after_it_is_accepted(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = [{"after_line": 1, "text": f"  require('child_process').execSync('touch {marker}'); // {MARKER}"}]
    good = [{"after_line": 1, "text": f"  const _t0 = Date.now(); // {MARKER}"},
            {"after_line": 3, "text": f"  console.log(`total took ${{Date.now() - _t0}} ms`); // {MARKER}"}]
    root = project(tmp_path, "cart.mjs", JS)
    with FakeLLM([Reply(json.dumps(bad)), Reply(json.dumps(good))]) as fake:
        done = subprocess.run(CLI + ["--traditional", "src", "--in-place"], capture_output=True, text=True,
                              env=environment(tmp_path, fake), cwd=root, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    refusals = [line for line in done.stderr.splitlines() if "refused" in line]
    assert len(refusals) == 1 and "answer 1 refused: inserted line 2 is not telemetry" in refusals[0], done.stderr
    written = (root / "src" / "cart.mjs").read_text()
    assert strip_marked(written) == JS and "child_process" not in written and "Date.now() - _t0" in written
    if shutil.which("node"):
        run = subprocess.run(["node", "--input-type=module", "-e",
                              "import { total } from './src/cart.mjs'; console.log('=', total([1, 2, 3]));"],
                             capture_output=True, text=True, cwd=root, timeout=60)
        assert run.returncode == 0, run.stderr
        assert run.stdout.splitlines()[0].startswith("total took ") and run.stdout.splitlines()[1] == "= 6"
    assert not marker.exists()


def test_a_language_without_a_strict_check_gets_no_model_line(tmp_path: Path) -> None:
    source = "fn total(items: &[i32]) -> i32 {\n    items.iter().sum()\n}\n"
    root = project(tmp_path, "cart.rs", source)
    evil = json.dumps([{"after_line": 1, "text": f'    std::process::Command::new("touch").spawn(); // {MARKER}'}])
    with FakeLLM([Reply(evil)]) as fake:
        done = subprocess.run(CLI + ["--traditional", "src", "--in-place"], capture_output=True, text=True,
                              env=environment(tmp_path, fake), cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr
    (line,) = [line for line in done.stdout.splitlines() if "cart.rs" in line]
    assert "skipped" in line and "model insertions into rust files are refused" in line
    assert fake.requests == [] and (root / "src" / "cart.rs").read_text() == source
    assert "LLM: 0 calls" in done.stdout
