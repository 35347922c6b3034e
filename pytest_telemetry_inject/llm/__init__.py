"""The optional LLM layer (``pip install "pytest-telemetry-inject[llm]"``).

Nothing here is imported on a run that has no LLM work, and litellm itself is imported
only right before the first request (``_litellm.load_litellm``). See docs/llm.md.

- ``config``: which models, where, with which keys and limits
- ``client``: one request through litellm (retries, Retry-After, budget, trace)
- ``refactorer``: fixes an insertion script that failed its test (script mode's only call)
- ``traditional``: the LLM pipeline for languages without templates
- ``parallel``: several models at once (first valid answer, or a judged benchmark)
- ``tokens``, ``cost``, ``gpu``, ``pool``: limits, budget, GPU placement, model rotation
"""

from __future__ import annotations
