"""GPUs and which local model runs on which: ``GPUScheduler``.

Free and total VRAM per GPU come from NVIDIA's NVML (``nvidia-ml-py``, imported as
``pynvml``) or AMD's ``rocm-smi --showmeminfo vram --json``; with neither, CPU mode. The
probes are plain functions of an injectable backend, so tests replay recorded answers.

A model's VRAM is estimated from its name: about 1.3 GB per billion parameters
(``llama3.1:8b`` -> 8, ``mixtral:8x7b`` -> 56, ``qwen2.5:0.5b`` -> 0.5), plus 20 %. Models
are placed largest first, each on the GPU whose free memory fits it most tightly (best
fit); one that fits nowhere goes to the GPU with the most free memory (flagged). With
several Ollama servers, one per GPU (``OLLAMA_HOSTS=gpu0=http://...:11434,gpu1=...``), each
model's requests are routed to the server of its GPU. GB here is 10^9 bytes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..trace import DEBUG, INFO, TRACE, WARNING
from .config import LLMConfig, ModelSpec

GB = 1_000_000_000
GB_PER_BILLION = 1.3
OVERHEAD = 0.20
UNKNOWN_SIZE_B = 7.0
"""Parameters assumed (billions) when a model's name does not say."""


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    vendor: str

    @property
    def key(self) -> str:
        return f"gpu{self.index}"

    @property
    def free_gb(self) -> float:
        return self.free_bytes / GB

    @property
    def total_gb(self) -> float:
        return self.total_bytes / GB


@dataclass(frozen=True)
class Placement:
    model: str
    device: str
    """``gpu0``, ``gpu1``, ... or ``cpu``."""
    need_gb: float
    fits: bool
    free_before_gb: float
    estimated: bool
    """The model's size was not in its name (UNKNOWN_SIZE_B was assumed)."""


# -- probes ----------------------------------------------------------------------------------------


def probe_nvml(nvml: Any = None) -> list[GPU]:
    """GPUs through NVML. ``nvml``: the ``pynvml`` module or a recording of it."""
    if nvml is None:
        import pynvml  # nvidia-ml-py

        nvml = pynvml
    nvml.nvmlInit()
    try:
        gpus = []
        for index in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):  # older bindings return bytes
                name = name.decode("utf-8", "replace")
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(GPU(index, str(name), int(memory.total), int(memory.free), "nvidia"))
        return gpus
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def _run_rocm_smi() -> str:
    if shutil.which("rocm-smi") is None:
        raise FileNotFoundError("rocm-smi is not installed")
    done = subprocess.run(["rocm-smi", "--showmeminfo", "vram", "--json"], capture_output=True, text=True,
                          timeout=20, check=True)
    return done.stdout


def parse_rocm_smi(text: str) -> list[GPU]:
    """The GPUs in ``rocm-smi --showmeminfo vram --json`` output (values are byte counts as
    strings, one ``cardN`` object per GPU)."""
    start = text.find("{")
    if start < 0:
        raise ValueError("rocm-smi printed no JSON")
    data = json.loads(text[start:])
    gpus = []
    for card, fields in data.items():
        match = re.fullmatch(r"card(\d+)", card)
        if not match or not isinstance(fields, dict):
            continue
        total = int(fields.get("VRAM Total Memory (B)", 0))
        used = int(fields.get("VRAM Total Used Memory (B)", 0))
        name = str(fields.get("Card Series") or fields.get("Card series") or fields.get("Card SKU") or "AMD GPU")
        gpus.append(GPU(int(match.group(1)), name, total, max(0, total - used), "amd"))
    return sorted(gpus, key=lambda g: g.index)


def probe_rocm(run: Callable[[], str] | None = None) -> list[GPU]:
    return parse_rocm_smi((run or _run_rocm_smi)())


def detect_gpus(probes: Sequence[Callable[[], list[GPU]]] | None = None) -> list[GPU]:
    """The GPUs of the first probe that finds any (NVML, then rocm-smi); [] means CPU mode."""
    for probe in probes if probes is not None else (probe_nvml, probe_rocm):
        try:
            gpus = probe()
        except Exception as exc:  # no driver, no library, no tool: try the next
            if TRACE.on:
                TRACE.event(DEBUG, "gpu", "probe failed", probe=getattr(probe, "__name__", str(probe)),
                            error=f"{type(exc).__name__}: {exc}")
            continue
        if gpus:
            if TRACE.on:
                TRACE.event(INFO, "gpu", "detected", gpus=[{"key": g.key, "name": g.name, "vendor": g.vendor,
                                                             "free_gb": round(g.free_gb, 2),
                                                             "total_gb": round(g.total_gb, 2)} for g in gpus])
            return gpus
    if TRACE.on:
        TRACE.event(INFO, "gpu", "no GPU found: CPU mode")
    return []


# -- sizes and placement ---------------------------------------------------------------------------


def parameters_billions(model_name: str) -> float | None:
    """Billions of parameters told by a model's name, or None."""
    name = model_name.rsplit("/", 1)[-1].lower()
    match = re.search(r"(\d+)x(\d+(?:\.\d+)?)b\b", name)
    if match:
        return int(match.group(1)) * float(match.group(2))
    match = re.search(r"(?<![\w.])(\d+(?:\.\d+)?)b\b", name.replace(":", " ").replace("-", " ").replace("_", " "))
    if match:
        return float(match.group(1))
    match = re.search(r"(?<![\w.])(\d+)m\b", name.replace(":", " ").replace("-", " "))
    if match:
        return int(match.group(1)) / 1000
    return None


def vram_needed_gb(model_name: str) -> tuple[float, bool]:
    """(GB of VRAM the model needs, whether its size was estimated)."""
    params = parameters_billions(model_name)
    estimated = params is None
    return round((params if params is not None else UNKNOWN_SIZE_B) * GB_PER_BILLION * (1 + OVERHEAD), 3), estimated


class GPUScheduler:
    def __init__(self, gpus: Sequence[GPU] | None = None, *,
                 probes: Sequence[Callable[[], list[GPU]]] | None = None) -> None:
        self.gpus = list(gpus) if gpus is not None else detect_gpus(probes)

    @property
    def cpu_mode(self) -> bool:
        return not self.gpus

    def assign(self, model_names: Sequence[str]) -> dict[str, Placement]:
        needs = {name: vram_needed_gb(name) for name in dict.fromkeys(model_names)}
        order = sorted(needs, key=lambda name: (-needs[name][0], name))
        if not self.gpus:
            placements = {name: Placement(name, "cpu", needs[name][0], True, 0.0, needs[name][1]) for name in order}
        else:
            free = {gpu.key: gpu.free_bytes / GB for gpu in self.gpus}
            placements = {}
            too_big = []
            for name in order:  # those that fit, each on the GPU it fits most tightly
                need, estimated = needs[name]
                fitting = [key for key, left in free.items() if left >= need]
                if not fitting:
                    too_big.append(name)  # placed after the others: it must not crowd them out
                    continue
                device = min(fitting, key=lambda key: (free[key] - need, key))
                placements[name] = Placement(name, device, need, True, round(free[device], 3), estimated)
                free[device] -= need
            for name in too_big:  # the GPU with the most free memory, which it fills (the rest offloaded)
                need, estimated = needs[name]
                device = max(free, key=lambda key: (free[key], -int(key[3:])))
                placements[name] = Placement(name, device, need, False, round(free[device], 3), estimated)
                free[device] = 0.0
        if TRACE.on:
            for placement in placements.values():
                TRACE.event(INFO if placement.fits else WARNING, "gpu", "assigned", model=placement.model,
                            device=placement.device, need_gb=placement.need_gb, fits=placement.fits,
                            free_before_gb=placement.free_before_gb, estimated=placement.estimated)
        return placements

    def route(self, config: LLMConfig) -> list[ModelSpec]:
        """The configured models with their GPU, and each local model's server set to the
        one of its GPU when ``OLLAMA_HOSTS`` names one."""
        local = [m for m in config.models if m.provider == "ollama"]
        placements = self.assign([m.name for m in local])
        routed = []
        for model in config.models:
            placement = placements.get(model.name)
            if placement is None:
                routed.append(model)
                continue
            base = config.ollama_hosts.get(placement.device) or model.api_base
            if placement.device not in config.ollama_hosts and config.ollama_hosts and TRACE.on:
                TRACE.event(WARNING, "gpu", "no server for device", model=model.name, device=placement.device)
            routed.append(replace(model, gpu=placement.device, api_base=base))
        return routed
