"""Rough edges of the LLM layer a user hits, through the real command line (subprocesses, the
local fake server behind litellm's real HTTP path): a file that needs splitting is sent in
groups of functions, never refused as too long; a refusal says how much room is left; the
sandbox's reason is not prefixed twice; a run without a model hints that one could try the
functions no template fits."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from fakellm import KEY, Reply, Request, openai_env, script_answer

from pytest_telemetry_inject.llm.telemetry_check import MARKER
from pytest_telemetry_inject.llm.tokens import estimate_tokens
from pytest_telemetry_inject.llm.traditional import strip_marked

CLI = [sys.executable, "-m", "pytest_telemetry_inject.cli"]
TEXTWRAP = Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py"
# An async one-liner under OpenTelemetry: no template fits it (the body is on the def line,
# the otel target has no try form, its decorator does not cover async functions).
NO_TEMPLATE = "async def other(x): return x\n\n\ndef fine(a):\n    return a\n"
HINT = "telemetry-inject: hint: 1 function failed every template; a model could try it"


def run_cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "OPENAI_", "OLLAMA_", "DEBUG_TRACE"))}
    return subprocess.run(CLI + args, capture_output=True, text=True, cwd=cwd, env={**base, **env}, timeout=300)


def project(tmp_path: Path, **files: str) -> Path:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def ollama_env(fake, ctx: int = 8192, **extra: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"LLM_MODEL": "ollama/llama3.1:8b", "OLLAMA_HOST": fake.url, "OLLAMA_NUM_CTX": str(ctx), **extra}


# -- the traditional pipeline splits what does not fit ------------------------------------------------


def entry_lines(source: str) -> dict[int, tuple[int, str]]:
    """def line -> (the line of its first statement after the docstring, that line's indentation)."""
    lines = source.splitlines()
    found = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                body = body[1:]
            line = lines[body[0].lineno - 1]
            found[node.lineno] = (body[0].lineno, line[: len(line) - len(line.lstrip())])
    return found


def test_a_file_that_needs_splitting_is_sent_in_groups_that_fit(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    """The issue's command: OLLAMA_NUM_CTX=8192 LLM_MODEL=ollama/llama3.1:8b telemetry-inject
    --traditional textwrap_copy.py (a copy of the standard library's textwrap.py, too long
    for one prompt). Each request holds some functions with their lines, fits the window
    with room for the answer, and together they cover every function."""
    shutil.copy(TEXTWRAP, tmp_path / "textwrap_copy.py")
    source = (tmp_path / "textwrap_copy.py").read_text()
    project(tmp_path)
    entries = entry_lines(source)
    listed = re.compile(r"^- (\S+): lines (\d+)-(\d+)$", re.M)

    def answer(request: Request) -> Reply:  # the telemetry of every function the request lists
        insertions = []
        for _name, start, _end in listed.findall(request.prompt):
            line, indent = entries[int(start)]
            insertions += [{"before_line": line, "text": f"{indent}import logging  # {MARKER}"},
                           {"before_line": line, "text": f"{indent}logging.getLogger(__name__).debug('in')  # {MARKER}"}]
        return Reply(json.dumps(insertions))

    fake = fake_llm(answer, models=["llama3.1:8b"])
    env = ollama_env(fake, LLM_MAX_RETRIES="1")
    # As in the issue (--dry-run), then writing the result.
    dry = run_cli(["--traditional", "textwrap_copy.py", "--dry-run"], tmp_path, **env)
    assert dry.returncode == 0, dry.stderr
    assert "does not fit" not in dry.stdout + dry.stderr and "1 instrumented" in dry.stdout
    requests = len(fake.chat_requests)
    done = run_cli(["--traditional", "textwrap_copy.py", "-o", "out", "--json"], tmp_path, **env)
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(done.stdout)["files"]
    assert result["status"] == "instrumented" and result["covered"] == result["functions"] == len(entries)
    prompts = [r.prompt for r in fake.chat_requests[requests:]]
    assert len(prompts) > 1, "the file was sent whole"
    assert estimate_tokens(number_all(source)) + 2048 > 8192  # it had to be split
    for prompt in prompts:
        assert estimate_tokens(prompt) + 2048 <= 8192, "a request that does not leave room for the answer"
    starts = [int(start) for prompt in prompts for _name, start, _end in listed.findall(prompt)]
    assert sorted(starts) == sorted(entries)  # each function in one request
    written = (tmp_path / "out" / "textwrap_copy.py").read_text()
    assert strip_marked(written) == source and written.count(MARKER) == 2 * len(entries)
    compile(written, "textwrap_copy.py", "exec")


def number_all(source: str) -> str:
    from pytest_telemetry_inject.llm.prompts import number_lines

    return number_lines(source)


def test_a_function_too_large_alone_is_refused_saying_how_much_room_is_left(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    body = "".join(f"    x{i} = {i} * {i}  # a line of some length, to fill the window\n" for i in range(700))
    project(tmp_path, **{"huge.py": f"def only():\n{body}    return 1\n"})
    fake = fake_llm([Reply("[]")], models=["llama3.1:8b"])
    done = run_cli(["--traditional", "huge.py", "--dry-run"], tmp_path, **ollama_env(fake))
    assert done.returncode == 3 and not fake.chat_requests
    (line,) = [line for line in done.stderr.splitlines() if "error:" in line]
    match = re.search(r"function only \(lines 1-702, ~(\d+) tokens with its line numbers\) does not fit: "
                      r"ollama_chat/llama3.1:8b leaves ~(\d+) tokens for code \(its input limit of 8192 tokens, "
                      r"from OLLAMA_NUM_CTX, less 2048 for the answer and ~(\d+) for the instructions\)", line)
    assert match, line
    cost, room, instructions = map(int, match.groups())
    assert room == 8192 - 2048 - instructions and cost > room and room < 6144


def test_a_prompt_that_does_not_fit_says_what_is_left_for_the_answer(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    """Script mode: the refactoring prompt (lessons, rules, the function) against a 1500-token
    window: the line says what the prompt leaves for the answer, not the window alone."""
    project(tmp_path, **{"mod.py": NO_TEMPLATE})
    fake = fake_llm([Reply("unused")], models=["llama3.1:8b"])
    done = run_cli(["mod.py", "--target", "otel", "--json"], tmp_path, **ollama_env(fake, ctx=1500))
    assert done.returncode == 0, done.stderr
    (failed,) = [f for f in json.loads(done.stdout)["skipped"] if f["qualname"] == "other"]
    assert failed["reason"].count("ollama_chat/llama3.1:8b") == 1, failed["reason"]
    match = re.search(r"ollama_chat/llama3.1:8b: the prompt \(~(\d+) tokens\) does not fit: it leaves ~(\d+) of its "
                      r"1500 tokens \(from OLLAMA_NUM_CTX\) for the answer, which needs 375; a prompt may have "
                      r"~1125 tokens\. Use a model with a larger context or smaller files", failed["reason"])
    assert match, failed["reason"]
    prompt, left = map(int, match.groups())
    assert left == max(0, 1500 - prompt) and not fake.chat_requests


# -- script mode: reasons and hints ------------------------------------------------------------------


def test_the_sandbox_reason_is_not_prefixed_twice(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    project(tmp_path, **{"mod.py": NO_TEMPLATE})
    raising = script_answer("", extra="raise ValueError('boom')\n")
    fake = fake_llm([Reply(raising)])
    done = run_cli(["mod.py", "--target", "otel", "--json"], tmp_path, **openai_env(fake, LLM_MAX_RETRIES="1"))
    assert done.returncode == 0, done.stderr
    (failed,) = [f for f in json.loads(done.stdout)["skipped"] if f["qualname"] == "other"]
    assert len(fake.chat_requests) == 1
    assert "openai/gpt-4o-mini: the script failed in the sandbox: ValueError: boom" in failed["reason"], failed
    assert failed["reason"].count("failed in the sandbox") == 1 and KEY not in done.stdout + done.stderr


def test_a_run_without_a_model_hints_that_one_could_try_what_no_template_fits(tmp_path: Path) -> None:
    project(tmp_path, **{"mod.py": NO_TEMPLATE, "ok.py": "def fine(a):\n    return a\n"})
    plain = run_cli(["mod.py", "ok.py", "--target", "otel"], tmp_path)
    assert plain.returncode == 0
    (hint,) = [line for line in plain.stderr.splitlines() if "hint" in line]
    assert hint.startswith(HINT + ": set LLM_MODEL (or --model), or run telemetry-inject --configure (docs/llm.md)")
    installed = importlib.util.find_spec("litellm") is not None
    assert hint.endswith('; it needs pip install "pytest-telemetry-inject[llm]"') != installed
    # Warm (from the file memos): the same hint.
    assert HINT in run_cli(["mod.py", "--target", "otel"], tmp_path).stderr
    # Not with --quiet or --json; not when every function has a template; not with a model.
    assert "hint" not in run_cli(["mod.py", "--target", "otel", "-q"], tmp_path).stderr
    as_json = run_cli(["mod.py", "--target", "otel", "--json"], tmp_path)
    assert "hint" not in as_json.stderr and json.loads(as_json.stdout)["functions"]["failed"] == 1
    assert "hint" not in run_cli(["ok.py", "--target", "otel"], tmp_path).stderr


def test_a_run_with_a_model_gives_no_hint(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    project(tmp_path, **{"mod.py": NO_TEMPLATE})
    fake = fake_llm([Reply("I cannot help with that.")])
    with_model = run_cli(["mod.py", "--target", "otel"], tmp_path, **openai_env(fake, LLM_MAX_RETRIES="1"))
    assert with_model.returncode == 0 and "hint" not in with_model.stderr and len(fake.chat_requests) == 1


def test_a_group_holds_the_whole_of_a_function_whose_nested_function_ends_first(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    """A nested function ends before the function that holds it: the group's lines run to the
    end of the outer one (not of the last function in line order)."""
    from fakellm import session_for

    from pytest_telemetry_inject.llm.traditional import TraditionalPipeline

    body = "".join(f"    x{i} = {i}\n" for i in range(150))
    source = "".join(f"def outer_{n}():\n    def inner_{n}():\n        return 0\n{body}    return 'end of {n}'\n\n\n"
                     for n in ("a", "b"))
    seen: list[str] = []

    def answer(request: Request) -> Reply:
        seen.append(request.prompt)
        start = int(re.search(r"^- outer_\w: lines (\d+)-", request.prompt, re.M).group(1))
        return Reply(json.dumps([{"after_line": start, "text": f"    import logging  # {MARKER}"},
                                 {"after_line": start, "text": f"    logging.getLogger(__name__).debug('in')  # {MARKER}"}]))

    fake = fake_llm(answer, models=["llama3.1:8b"])
    pipeline = TraditionalPipeline(session_for(tmp_path, ollama_env(fake, ctx=3600), gpu_probes=[]))
    result = pipeline.instrument("nested.py", source.encode())
    assert result.status == "instrumented", result.reason
    assert len(seen) == 2
    for prompt, name in zip(seen, ("a", "b")):
        assert f"return 'end of {name}'" in prompt and f"- inner_{name}:" in prompt
    assert strip_marked(result.output) == source
