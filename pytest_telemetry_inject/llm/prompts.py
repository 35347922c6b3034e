"""What is sent to a model: the lessons, the rules of insertion scripts, the function.

Exactly this, and nothing else, leaves the machine: the lessons (``llm/lessons/``), the rules
below, the telemetry forms of the configured target, the function's source with line
numbers and its sha256, the failing script and its test's messages (or the templates'
reasons). Never a key, never another file.
"""

from __future__ import annotations

import re
from pathlib import Path

from .config import LLMConfig

LESSONS_LIMIT = 12_000
_FALLBACK_LESSONS = (
    "- Only add lines, indentation and text inside lines; never change the function's code.\n"
    "- Wrap the body after the docstring; indent it one unit; keep lines inside strings as they are.\n"
    "- Use the exact span name of the request and the request's SOURCE_SHA256.\n"
)
_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\r?\n(.*?)```", re.S | re.I)


def lessons_dir(config: LLMConfig) -> Path | None:
    """The configured lessons folder (``LLM_LESSONS_DIR``), else the package's own
    (``llm/lessons/``, package data: an installed package sends the same lessons as a
    checkout)."""
    candidates = [config.lessons_dir] if config.lessons_dir else []
    candidates.append(Path(__file__).resolve().parent / "lessons")
    for folder in candidates:
        if folder is not None and folder.is_dir() and any(folder.glob("*.md")):
            return folder
    return None


def load_lessons(config: LLMConfig) -> str:
    folder = lessons_dir(config)
    if folder is None:
        return _FALLBACK_LESSONS
    parts = []
    for path in sorted(folder.glob("*.md")):
        if path.name.lower() == "readme.md":
            continue
        try:
            parts.append(path.read_text(encoding="utf-8").strip())
        except OSError:
            continue
    text = "\n\n".join(parts) or _FALLBACK_LESSONS
    return text[:LESSONS_LIMIT]


def telemetry_forms(language: str, style: str, target: str, span_name: str, source: str) -> str:
    """The telemetry this tool recognises for the target (strip removes only those): for
    Python, each template's output on a small function of the same kind."""
    if language != "python":
        # A language module may describe its own forms; else the failing script shows them.
        try:
            from ..languages import get_language

            describe = getattr(get_language(language), "telemetry_example", None)
        except KeyError:
            describe = None
        if describe is not None:
            return str(describe(span_name, style, target))
        return (f"Use exactly the telemetry text this tool's {language} templates insert (the failing script "
                f"shows it), with the span name \"{span_name}\"; any other wording is not recognised when the "
                "telemetry is stripped. Braced languages put it inside existing lines (insert_text), so no "
                "line moves.")
    from .forms import telemetry_examples

    examples = sorted(telemetry_examples(target, span_name, source), key=lambda item: item[0] != style)
    if not examples:
        return "No telemetry form of this target fits this kind of function."
    parts = ["The only telemetry lines allowed are those of these forms (shown on a small function of the same "
             "kind; leave the module header out, the tool adds it). Any other added line is rejected."]
    for index, (form, example) in enumerate(examples):
        label = f"{form} style" + (" (preferred)" if index == 0 else "")
        parts.append(f"{label}:\n```python\n{example.rstrip()}\n```")
    return "\n".join(parts)


SYSTEM = """You fix insertion scripts for pytest-telemetry-inject. An insertion script adds telemetry to ONE \
function by line edits, and nothing else.

Rules (a script that breaks one is refused without being run):
- Its only import: from pytest_telemetry_inject.scriptlib import apply, indent, insert, insert_after, insert_text
- Only assignments, def, for, if, return, literals and calls of those helpers and of plain builtins.
- It defines EDITS and transform(source), which returns apply(source, EDITS, source_sha256=SOURCE_SHA256).
- Edits (lines count from 1 at the function's first line, decorators included, and always mean the ORIGINAL lines):
  indent(first, last, unit, after="", keep=[]): insert `unit` after the prefix `after` on lines first..last, \
except blank lines and the lines in `keep`;
  insert(before, text) / insert_after(line, text): a new line (text without a line ending);
  insert_text(line, column, text): text inside a line, before the original column.
- You may only ADD. A script whose output changes, removes or reorders anything of the original is rejected.

Lessons learned:
{lessons}

Answer with exactly one ```python code block that holds the whole script."""


def number_lines(source: str) -> str:
    lines = source.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    width = len(str(len(lines)))
    return "\n".join(f"{i:>{width}} | {line}" for i, line in enumerate(lines, 1))


def refactor_messages(config: LLMConfig, *, language: str, span_name: str, source: str, source_sha256: str,
                      failing_script: str, failures: list[str], style: str,
                      target: str) -> list[dict[str, str]]:
    system = SYSTEM.format(lessons=load_lessons(config))
    parts = [f"Function `{span_name}` ({language}), lines numbered from 1:", "", number_lines(source), "",
             f"SOURCE_SHA256 = {source_sha256!r}", f"SPAN_NAME = {span_name!r}", "",
             f"Telemetry for this project (target {target!r}):",
             telemetry_forms(language, style, target, span_name, source), ""]
    if failing_script:
        parts += ["The current script failed its test:", "```python", failing_script.rstrip(), "```", "",
                  "Its test said:"]
    else:
        parts += ["No template could instrument this function:"]
    parts += [f"- {reason}" for reason in failures or ["(no reason given)"]]
    parts += ["", "Write the fixed insertion script."]
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n".join(parts)}]


def feedback_message(reason: str) -> dict[str, str]:
    return {"role": "user", "content": f"That script was rejected: {reason}\nAnswer with the whole corrected script."}


def extract_code(text: str) -> str | None:
    """The first fenced code block of an answer (or the answer itself when it is bare code)."""
    match = _FENCE.search(text or "")
    if match:
        return match.group(1)
    stripped = (text or "").strip()
    if stripped.startswith(("from ", "import ", '"""', "EDITS", "def ")) and "transform" in stripped:
        return stripped + "\n"
    return None
