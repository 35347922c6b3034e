"""The traditional pipeline (``telemetry-inject --traditional PATHS``): a model inserts the
telemetry, for languages that have no templates.

Per file:

1. ``HybridAnalyzer`` finds the functions: tree-sitter where a grammar wheel is installed
   (``tree-sitter-python``, ``tree-sitter-go``, ...), else ``LLMAnalyzer`` asks the model.
2. ``CodeInjector`` asks for the insertions (JSON: which original line, which new line);
   a file whose prompt does not fit the model's input limit is sent in groups of functions
   that fit (one function at a time when need be; the lines between them go with them).
3. ``RetryInjector`` validates every answer and retries with the reason, up to
   ``--max-retries`` attempts; ``ReflectionEngine`` steps in after
   ``--reflection-threshold`` failures, asks the model why they failed, and its guidance
   goes with the next attempt.

An answer is accepted only if removing the inserted lines (every line holding the marker
``telemetry-inject``) gives back the original file EXACTLY, byte for byte; when a syntax
check is at hand (Python, or a tree-sitter grammar) the result must also parse; and every
inserted line must be a statement of the telemetry grammar (``telemetry_check``): what a
model writes is telemetry or nothing. Files of a language whose telemetry nobody can check
strictly are refused before any request. ``--strip --traditional`` removes the marked lines
again.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import TelemetryInjectError
from ..scriptlib import split_lines
from ..trace import INFO, TRACE, WARNING, traced
from ._litellm import LLMError
from .client import Message
from .extensions import LanguageInfo, language_of
from .parallel import Asker, Outcome
from .prompts import number_lines
from .telemetry_check import MARKER, allowed_forms, check_inserted_lines, unchecked_reason
from .tokens import PromptTooLarge, estimate_tokens, tokens_of_bytes

GUIDANCE_LIMIT = 1500
"""Bytes of a reflection's guidance sent with the next attempt."""
FEEDBACK_COUNT, FEEDBACK_LIMIT = 3, 300
"""The earlier rejections sent with a retry: the last three, 300 bytes each."""
RETRY_RESERVE_TOKENS = tokens_of_bytes(GUIDANCE_LIMIT + FEEDBACK_COUNT * (FEEDBACK_LIMIT + 3) + 120)
"""Room kept in a prompt for what a retry adds (the guidance, the earlier rejections, their headings)."""


def clip(text: str, limit: int) -> str:
    """At most ``limit`` bytes of ``text`` (UTF-8), cut on a character boundary."""
    data = text.encode("utf-8", "surrogatepass")
    return text if len(data) <= limit else data[:limit].decode("utf-8", "ignore")


def strip_marked(text: str) -> str:
    """``text`` without the lines the traditional pipeline inserted."""
    return "".join(line for line in split_lines(text) if MARKER not in line)


# -- finding functions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FunctionSpan:
    name: str
    start_line: int
    end_line: int


_FUNCTION_NODES = frozenset({
    "function_definition", "function_declaration", "method_definition", "method_declaration",
    "function_item", "method", "singleton_method", "constructor_declaration", "func_literal",
    "function_signature_item", "local_function", "function",
})


class TreeSitterAnalyzer:
    def available(self, language: LanguageInfo) -> bool:
        return bool(language.grammar) and importlib.util.find_spec(language.grammar) is not None

    def _parser(self, language: LanguageInfo) -> Any:
        import tree_sitter

        module = importlib.import_module(language.grammar)
        return tree_sitter.Parser(tree_sitter.Language(getattr(module, language.grammar_function)()))

    def functions(self, text: str, language: LanguageInfo) -> list[FunctionSpan]:
        tree = self._parser(language).parse(text.encode("utf-8", "surrogatepass"))
        found = []
        stack = [tree.root_node]
        while stack:
            node = stack.pop()
            if node.type in _FUNCTION_NODES:
                name_node = node.child_by_field_name("name")
                name = name_node.text.decode("utf-8", "replace") if name_node is not None else "<anonymous>"
                found.append(FunctionSpan(name, node.start_point.row + 1, node.end_point.row + 1))
            stack.extend(reversed(node.children))
        return sorted(found, key=lambda f: (f.start_line, f.end_line))

    def syntax_error(self, text: str, language: LanguageInfo) -> str | None:
        root = self._parser(language).parse(text.encode("utf-8", "surrogatepass")).root_node
        return "the output does not parse (tree-sitter found an error)" if root.has_error else None


class LLMAnalyzer:
    """Asks the model for the functions of a file (JSON)."""

    def __init__(self, asker: Asker) -> None:
        self.asker = asker

    def functions(self, text: str, language: LanguageInfo, path: str) -> list[FunctionSpan]:
        count = len(split_lines(text))
        messages = [
            {"role": "system", "content": "You list the functions of source files. Answer with JSON only."},
            {"role": "user", "content": f"File {os.path.basename(path)} ({language.name}), lines numbered:\n\n"
                                        f"{number_lines(text)}\n\nList every function and method as a JSON array "
                                        '[{"name": "...", "start_line": N, "end_line": M}] (1-based, inclusive).'},
        ]

        def validate(answer: str) -> tuple[list[FunctionSpan] | None, str]:
            data = _json_in(answer)
            if not isinstance(data, list):
                return None, "the answer is not a JSON array of functions"
            spans = []
            for item in data:
                try:
                    span = FunctionSpan(str(item["name"]), int(item["start_line"]), int(item["end_line"]))
                except (KeyError, TypeError, ValueError):
                    return None, "each function needs name, start_line and end_line"
                if not 1 <= span.start_line <= span.end_line <= count:
                    return None, f"function {span.name} has lines outside the file (1..{count})"
                spans.append(span)
            return spans, ""

        outcome = self.asker.ask(messages, validate, purpose=f"analyse {os.path.basename(path)}")
        if outcome.best is None:
            raise TraditionalError(_why(outcome, "the model could not list the functions"))
        spans: list[FunctionSpan] = outcome.best.value
        return spans


class HybridAnalyzer:
    def __init__(self, asker: Asker | None) -> None:
        self.tree_sitter = TreeSitterAnalyzer()
        self.llm = LLMAnalyzer(asker) if asker is not None else None

    def functions(self, text: str, language: LanguageInfo, path: str) -> tuple[list[FunctionSpan], str]:
        """(functions, "tree-sitter" or "llm")."""
        if self.tree_sitter.available(language):
            return self.tree_sitter.functions(text, language), "tree-sitter"
        if self.llm is None:
            raise TraditionalError(f"no tree-sitter grammar for {language.name} and no model to ask")
        return self.llm.functions(text, language, path), "llm"


# -- inserting -----------------------------------------------------------------------------------------


def span_of(functions: Sequence[FunctionSpan]) -> tuple[int, int]:
    """(first line, last line) of a group of functions (a nested one may end before the
    function that holds it: the last in line order is not the one that ends last)."""
    return min(f.start_line for f in functions), max(f.end_line for f in functions)


class TraditionalError(TelemetryInjectError):
    """The traditional pipeline could not instrument a file (it is left as it was)."""


@dataclass
class Injection:
    text: str
    inserted: int
    covered: list[str]


def _json_in(answer: str) -> Any:
    match = re.search(r"```(?:json)?\s*\n(.*?)```", answer or "", re.S)
    body = match.group(1) if match else (answer or "").strip()
    try:
        return json.loads(body)
    except ValueError:
        start = body.find("[")
        end = body.rfind("]")
        if 0 <= start < end:
            try:
                return json.loads(body[start:end + 1])
            except ValueError:
                return None
    return None


def apply_insertions(original: str, insertions: Sequence[dict[str, Any]]) -> str:
    """The file with each {"after_line"|"before_line": N, "text": "..."} inserted (line
    numbers of the original; the line ending is the file's)."""
    lines = split_lines(original)
    before: dict[int, list[str]] = {}
    for item in insertions:
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise ValueError("each insertion needs a text")
        text = item["text"]
        if "\n" in text or "\r" in text:
            raise ValueError("an inserted text must be one line")
        if "after_line" in item:
            index = int(item["after_line"])
        elif "before_line" in item:
            index = int(item["before_line"]) - 1
        else:
            raise ValueError("each insertion needs after_line or before_line")
        if not 0 <= index <= len(lines):
            raise ValueError(f"line {index} is outside the file (0..{len(lines)})")
        before.setdefault(index, []).append(text)
    out: list[str] = []
    for index in range(len(lines) + 1):
        # A new line takes the ending of the line above it (else of the line below it).
        eol = _eol(lines, index - 1) or _eol(lines, index) or "\n"
        for text in before.get(index, ()):
            if out and not out[-1].endswith("\n"):
                out[-1] += eol  # inserting after a last line without an ending
            out.append(text + eol)
        if index < len(lines):
            out.append(lines[index])
    return "".join(out)


def _eol(lines: Sequence[str], index: int) -> str:
    if 0 <= index < len(lines):
        line = lines[index]
        if line.endswith("\r\n"):
            return "\r\n"
        if line.endswith("\n"):
            return "\n"
    return ""


class CodeInjector:
    """Builds the prompt and turns an answer into the instrumented file (or a reason)."""

    def __init__(self, language: LanguageInfo, path: str, original: str, functions: Sequence[FunctionSpan]) -> None:
        self.language = language
        self.path = path
        self.original = original
        self.functions = list(functions)

    def excerpt(self, first: int, last: int) -> str:
        """Lines ``first``..``last`` (1-based, inclusive) numbered as in the whole file."""
        lines = split_lines(self.original)
        width = len(str(len(lines)))
        return "\n".join(f"{i:>{width}} | {lines[i - 1].rstrip(chr(13) + chr(10))}" for i in range(first, last + 1))

    @staticmethod
    def listing(functions: Sequence[FunctionSpan]) -> str:
        return "\n".join(f"- {f.name}: lines {f.start_line}-{f.end_line}" for f in functions)

    def messages(self, functions: Sequence[FunctionSpan], guidance: str = "", whole_file: bool = True) -> list[Message]:
        if whole_file:
            code = number_lines(self.original)
        else:
            code = self.excerpt(*span_of(functions))
        return self.messages_for(code, self.listing(functions), guidance)

    def messages_for(self, code: str, listing: str, guidance: str = "") -> list[Message]:
        guidance = clip(guidance, GUIDANCE_LIMIT)
        system = (
            "You add function-level telemetry to source files by INSERTING whole lines, never changing one. "
            f"Every line you insert must end with the comment `{self.language.comment} {MARKER}` "
            f"(the marker {MARKER!r} is how the tool recognises and removes them). Record the start time "
            "when a function is entered and log its name and duration before it returns. Each inserted line "
            "must be ONE statement of these forms and nothing else (any other line is refused): "
            f"{allowed_forms(self.language.name)}. Never insert above a docstring or a `from __future__` "
            "import. Keep the original indentation style. Answer with a JSON array of insertions only: "
            '[{"after_line": N, "text": "the whole new line, with its indentation"}] (use "before_line" for '
            "a line above line N); line numbers are those of the original file.")
        user = (f"File {os.path.basename(self.path)} ({self.language.name}), lines numbered:\n\n{code}\n\n"
                f"Functions to instrument:\n{listing}\n")
        if guidance:
            user += f"\nGuidance from the earlier failed attempts:\n{guidance}\n"
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def validate(self, answer: str) -> tuple[Injection | None, str]:
        data = _json_in(answer)
        if isinstance(data, dict) and isinstance(data.get("insertions"), list):
            data = data["insertions"]
        if isinstance(data, list):
            try:
                text = apply_insertions(self.original, data)
            except (ValueError, TypeError) as exc:
                return None, f"the insertions cannot be applied: {exc}"
        else:
            match = re.search(r"```[\w+-]*\s*\n(.*?)```", answer or "", re.S)
            if not match:
                return None, "the answer is neither a JSON array of insertions nor a code block"
            text = match.group(1)
        return self.check(text)

    def check(self, text: str) -> tuple[Injection | None, str]:
        if strip_marked(text) != self.original:
            return None, ("removing the inserted lines does not give back the original file exactly: insert whole "
                          f"lines only, each ending with the comment `{self.language.comment} {MARKER}`")
        inserted = len(split_lines(text)) - len(split_lines(self.original))
        if inserted <= 0:
            return None, "no telemetry was inserted"
        problem = check_inserted_lines(self.original, text, language=self.language.name,
                                       function_names=[f.name for f in self.functions])
        if problem:
            return None, problem
        problem = syntax_problem(text, self.language, self.path)
        if problem:
            return None, problem
        return Injection(text, inserted, covered_functions(text, self.functions)), ""


def covered_functions(text: str, functions: Sequence[FunctionSpan]) -> list[str]:
    """The functions that got at least one inserted line inside them."""
    rows, original_row = [], 0
    for line in split_lines(text):
        if MARKER in line:
            rows.append(original_row + 1)  # inserted before the next original line
        else:
            original_row += 1
    return [f.name for f in functions if any(f.start_line <= row <= f.end_line for row in rows)]


def syntax_problem(text: str, language: LanguageInfo, path: str) -> str | None:
    if language.name == "python":
        try:
            compile(text, path, "exec", dont_inherit=True)
        except SyntaxError as exc:
            return f"the output does not parse: line {exc.lineno}: {exc.msg}"
        except ValueError as exc:
            return f"the output does not parse: {exc}"
        return None
    analyzer = TreeSitterAnalyzer()
    if analyzer.available(language):
        try:
            return analyzer.syntax_error(text, language)
        except Exception:
            return None
    return None


class ReflectionEngine:
    """After ``threshold`` failures, asks the model why they failed; its answer guides the
    next attempt."""

    def __init__(self, asker: Asker, threshold: int) -> None:
        self.asker = asker
        self.threshold = max(1, threshold)

    def reflect(self, path: str, failures: Sequence[str]) -> str:
        if len(failures) < self.threshold:
            return ""
        messages = [
            {"role": "system", "content": "You review failed attempts at inserting telemetry lines into a source "
                                          "file and say, in at most five short imperative lines, what to do "
                                          "differently."},
            {"role": "user", "content": f"File {os.path.basename(path)}. The attempts failed because:\n"
                                        + "\n".join(f"- {f}" for f in failures)},
        ]
        outcome = self.asker.ask(messages, lambda text: (text.strip() or None, "" if text.strip() else "empty"),
                                 purpose=f"reflect {os.path.basename(path)}")
        guidance = outcome.best.value if outcome.best is not None else ""
        if TRACE.on:
            TRACE.event(INFO, "traditional", "reflection", path=path, failures=len(failures), guidance=guidance[:500])
        return guidance


class RetryInjector:
    def __init__(self, asker: Asker, *, max_retries: int, reflection: ReflectionEngine) -> None:
        self.asker = asker
        self.max_retries = max(1, max_retries)
        self.reflection = reflection

    def inject(self, injector: CodeInjector, functions: Sequence[FunctionSpan], *, whole_file: bool = True,
               validate: Callable[[str], tuple[Any, str]] | None = None) -> tuple[Any, list[str], int]:
        """(the accepted value or None, the reasons of the failures, attempts)."""
        failures: list[str] = []
        guidance = ""
        check = validate or injector.validate
        for attempt in range(1, self.max_retries + 1):
            if failures and len(failures) >= self.reflection.threshold and not guidance:
                guidance = self.reflection.reflect(injector.path, failures)
            messages = injector.messages(functions, guidance, whole_file)
            if failures:
                messages[-1]["content"] += "\nEarlier attempts were rejected:\n" + "\n".join(
                    f"- {clip(f, FEEDBACK_LIMIT)}" for f in failures[-FEEDBACK_COUNT:])
            outcome = self.asker.ask(messages, check, purpose=f"inject {os.path.basename(injector.path)}")
            if outcome.best is not None:
                return outcome.best.value, failures, attempt
            failures.extend(a.reason for a in outcome.answers if a.reason)
            if TRACE.on:
                TRACE.event(WARNING, "traditional", "attempt rejected", path=injector.path, attempt=attempt,
                            reasons=[a.reason for a in outcome.answers])
            if all(a.error_kind for a in outcome.answers):
                break
        return None, failures, attempt


# -- one file, many files ---------------------------------------------------------------------------


TraditionalStatus = Literal["instrumented", "stripped", "unchanged", "skipped", "failed"]


@dataclass
class TraditionalResult:
    path: str
    language: str
    status: TraditionalStatus
    """``instrumented``, ``stripped`` (``--strip``), ``unchanged``, ``skipped`` or ``failed`` (the
    file is left as it was)."""
    reason: str = ""
    output: str | None = None
    functions: int = 0
    covered: list[str] = field(default_factory=list)
    analyzer: str = ""
    attempts: int = 0
    inserted: int = 0
    rejected: list[str] = field(default_factory=list)
    """Why each rejected answer (or failed request) was rejected, in order, also when a
    later answer was accepted."""


class TraditionalPipeline:
    def __init__(self, session: Any, *, max_retries: int | None = None,
                 reflection_threshold: int | None = None) -> None:
        self.session = session
        self.asker: Asker = session.asker
        config = session.config
        self.analyzer = HybridAnalyzer(self.asker)
        self.reflection = ReflectionEngine(self.asker, reflection_threshold or config.reflection_threshold)
        self.retry = RetryInjector(self.asker, max_retries=max_retries or config.max_retries,
                                   reflection=self.reflection)

    @traced("traditional")
    def instrument(self, path: str, data: bytes) -> TraditionalResult:
        language = language_of(path)
        if language is None:
            return TraditionalResult(path, "", "skipped", "not a source file (unknown extension)")
        result = TraditionalResult(path, language.name, "failed")
        try:
            original = data.decode("utf-8")
        except UnicodeDecodeError:
            result.status, result.reason = "skipped", "not UTF-8 text"
            return result
        if "\0" in original:
            result.status, result.reason = "skipped", "a binary file"
            return result
        if MARKER in original:
            result.status, result.reason = "skipped", f"it already holds {MARKER!r} lines (strip them first)"
            return result
        refused = unchecked_reason(language.name)
        if refused:  # before any request: no answer could be accepted
            result.status, result.reason = "skipped", refused
            return result
        try:
            functions, result.analyzer = self.analyzer.functions(original, language, path)
        except (TraditionalError, LLMError) as exc:
            result.reason = str(exc)
            return result
        result.functions = len(functions)
        if not functions:
            result.status, result.reason = "unchanged", "no function found"
            return result
        if TRACE.on:
            TRACE.event(INFO, "traditional", "functions", path=path, language=language.name, count=len(functions),
                        analyzer=result.analyzer)
        injector = CodeInjector(language, path, original, functions)
        try:
            chunks = self._chunks(injector, functions)
        except PromptTooLarge as exc:
            result.reason = str(exc)
            return result
        if chunks is None:
            value, failures, attempts = self.retry.inject(injector, functions, whole_file=True)
        else:  # split, even into one group: the whole file does not fit
            value, failures, attempts = self._by_chunks(injector, chunks)
        result.attempts, result.rejected = attempts, list(failures)
        if value is None:
            result.reason = _last(failures, "no valid answer")
            return result
        result.status, result.output = "instrumented", value.text
        result.inserted, result.covered = value.inserted, value.covered
        if TRACE.on:
            TRACE.event(INFO, "traditional", "instrumented", path=path, inserted=value.inserted,
                        covered=len(value.covered), functions=len(functions), attempts=result.attempts)
        return result

    def _room(self, injector: CodeInjector) -> tuple[int, str]:
        """(the tokens a prompt's code and function list may take with every model, and how
        that room comes about for the tightest model: its input limit, less the answer, the
        instructions and what a retry adds)."""
        models = self.asker.usable() or self.asker.models
        instructions = estimate_tokens("\n".join(m["content"] for m in injector.messages_for("", "")))
        rooms = []
        for model in models:
            limits = self.session.tokens.limits(model)
            answer = self.session.client.output_tokens(model)
            room = limits.input - answer - instructions - RETRY_RESERVE_TOKENS
            rooms.append((room, f"{model.name} leaves ~{max(room, 0)} tokens for code (its input limit of "
                                f"{limits.input} tokens, from {limits.source}, less {answer} for the answer and "
                                f"~{instructions + RETRY_RESERVE_TOKENS} for the instructions)"))
        return min(rooms)

    def _chunks(self, injector: CodeInjector, functions: list[FunctionSpan]) -> list[list[FunctionSpan]] | None:
        """None when the whole file fits every model (one prompt); else groups of functions,
        each sent alone with its lines (the lines between its functions included): as many
        consecutive functions as fit, one when only one fits. A function that alone does not
        fit is refused (PromptTooLarge, saying how much room there is)."""
        room, why = self._room(injector)
        whole = estimate_tokens(number_lines(injector.original)) + estimate_tokens(injector.listing(functions))
        if whole <= room:
            return None
        lines = split_lines(injector.original)
        width = len(str(len(lines)))
        # Bytes of the numbered excerpt of lines 1..n (as CodeInjector.excerpt renders them).
        ends = [0]
        for number, line in enumerate(lines, 1):
            ends.append(ends[-1] + len(f"{number:>{width}} | {line.rstrip(chr(13) + chr(10))}\n".encode()))

        def inside(inner: FunctionSpan, outer: FunctionSpan) -> bool:
            return (outer.start_line <= inner.start_line and inner.end_line <= outer.end_line
                    and (outer.start_line, outer.end_line) != (inner.start_line, inner.end_line))

        outer = [f for f in functions if not any(inside(f, o) for o in functions)]
        inner = [f for f in functions if f not in outer]

        def group(members: list[FunctionSpan]) -> list[FunctionSpan]:
            first, last = span_of(members)
            nested = [f for f in inner if first <= f.start_line and f.end_line <= last]
            return sorted(members + nested, key=lambda f: (f.start_line, f.end_line))

        def cost(members: list[FunctionSpan]) -> int:
            first, last = span_of(members)
            code = ends[last] - ends[first - 1]
            listing = sum(len(f"- {f.name}: lines {f.start_line}-{f.end_line}\n".encode())
                          for f in group(members))
            return tokens_of_bytes(code) + tokens_of_bytes(listing)

        chunks: list[list[FunctionSpan]] = []
        current: list[FunctionSpan] = []
        for function in outer:
            alone = cost([function])
            if alone > room:
                raise PromptTooLarge(f"function {function.name} (lines {function.start_line}-{function.end_line}, "
                                     f"~{alone} tokens with its line numbers) does not fit: {why}; use a model "
                                     "with a larger context")
            if current and cost(current + [function]) > room:
                chunks.append(group(current))
                current = []
            current.append(function)
        if current:
            chunks.append(group(current))
        if TRACE.on:
            TRACE.event(INFO, "tokens", "prompt split by function", path=injector.path, chunks=len(chunks),
                        functions=len(functions), room=room, whole_file=whole)
        return chunks

    def _by_chunks(self, injector: CodeInjector, chunks: list[list[FunctionSpan]]) -> tuple[Any, list[str], int]:
        insertions: list[dict[str, Any]] = []
        failures: list[str] = []
        attempts = 0
        total = len(split_lines(injector.original))
        for chunk in chunks:
            first, last = span_of(chunk)

            def validate(answer: str, first: int = first, last: int = last) -> tuple[Any, str]:
                data = _json_in(answer)
                if not isinstance(data, list):
                    return None, "the answer is not a JSON array of insertions"
                for item in data:
                    line = item.get("after_line", (item.get("before_line") or 1) - 1) if isinstance(item, dict) else -1
                    if not isinstance(line, int) or not first - 1 <= line <= min(last, total):
                        return None, f"an insertion at line {line} is outside lines {first}-{last}"
                try:  # with the chunks accepted so far: names they bind are known
                    text = apply_insertions(injector.original, insertions + data)
                except (ValueError, TypeError) as exc:
                    return None, f"the insertions cannot be applied: {exc}"
                injection, reason = injector.check(text)
                return (data if injection is not None else None), reason

            value, chunk_failures, chunk_attempts = self.retry.inject(injector, chunk, whole_file=False,
                                                                      validate=validate)
            attempts += chunk_attempts
            failures.extend(chunk_failures)
            if value is None:
                return None, failures, attempts
            insertions.extend(value)
        injection, reason = injector.check(apply_insertions(injector.original, insertions))
        if injection is None:
            failures.append(reason)
        return injection, failures, attempts


def _why(outcome: Outcome, default: str) -> str:
    reasons = outcome.reasons
    return reasons[-1] if reasons else default


def _last(failures: Sequence[str], default: str) -> str:
    return f"{failures[-1]} ({len(failures)} rejected answers)" if failures else default
