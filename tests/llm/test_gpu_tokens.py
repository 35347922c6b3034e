"""GPU scheduling on recorded NVML and rocm-smi answers; model rotation; token limits."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fakellm import FIXTURES, Reply, nvml, session_for

from pytest_telemetry_inject.llm.config import LLMConfig, ModelSpec
from pytest_telemetry_inject.llm.gpu import (
    GPU,
    GPUScheduler,
    detect_gpus,
    parse_rocm_smi,
    probe_nvml,
    probe_rocm,
    vram_needed_gb,
)
from pytest_telemetry_inject.llm.pool import OllamaModelPool
from pytest_telemetry_inject.llm.tokens import PromptTooLarge, TokenDetector


def test_nvml_recordings() -> None:
    recorded = nvml("nvml_two_gpus.json")
    gpus = probe_nvml(recorded)
    assert [(g.key, g.name, g.vendor) for g in gpus] == [("gpu0", "NVIDIA GeForce RTX 4090", "nvidia"),
                                                         ("gpu1", "NVIDIA GeForce RTX 3060", "nvidia")]
    assert gpus[0].free_bytes == 16883318784 and round(gpus[0].total_gb, 1) == 25.8
    assert recorded.calls == ["init", "shutdown"]
    (a100,) = probe_nvml(nvml("nvml_old_bindings_a100.json"))
    assert a100.name == "NVIDIA A100-SXM4-80GB" and a100.free_gb > 84


def test_rocm_smi_recordings() -> None:
    gpus = probe_rocm(lambda: (FIXTURES / "rocm_smi_meminfo_vram.txt").read_text())
    assert [(g.key, g.vendor, g.total_bytes) for g in gpus] == [("gpu0", "amd", 68702699520),
                                                               ("gpu1", "amd", 68702699520)]
    assert gpus[0].free_bytes == 68702699520 - 11161047040
    (card,) = parse_rocm_smi((FIXTURES / "rocm_smi_meminfo_vram_warning.txt").read_text())
    assert card.free_bytes == 25753026560 - 1472614400


def test_detection_order_and_cpu_mode() -> None:
    def no_driver() -> list[GPU]:
        raise OSError("NVML Shared Library Not Found")

    amd = lambda: probe_rocm(lambda: (FIXTURES / "rocm_smi_meminfo_vram.txt").read_text())  # noqa: E731
    assert [g.vendor for g in detect_gpus([no_driver, amd])] == ["amd", "amd"]
    assert detect_gpus([no_driver, lambda: []]) == []
    placements = GPUScheduler([]).assign(["llama3.1:8b"])
    assert placements["llama3.1:8b"].device == "cpu"


def test_vram_estimates_from_names() -> None:
    assert vram_needed_gb("ollama_chat/llama3.1:8b") == (round(8 * 1.3 * 1.2, 3), False)
    assert vram_needed_gb("mixtral:8x7b")[0] == round(56 * 1.56, 3)
    assert vram_needed_gb("qwen2.5:0.5b")[0] == round(0.5 * 1.56, 3)
    assert vram_needed_gb("codestral")[1] is True  # size unknown: estimated


def test_largest_first_best_fit_and_fallback() -> None:
    gpus = probe_nvml(nvml("nvml_two_gpus.json"))  # free: 16.9 GB and 12.5 GB
    placements = GPUScheduler(gpus).assign(["qwen2.5:0.5b", "llama3.1:8b", "qwen2.5-coder:7b", "llama3.3:70b"])
    # The models that fit first, largest first: 8b (12.5 GB) on gpu1 (12.54, the tightest),
    # 7b (10.9 GB) on gpu0, 0.5b on gpu0 (gpu1 has 0.06 GB left).
    assert {n: (p.device, p.fits) for n, p in placements.items() if n != "llama3.3:70b"} == {
        "llama3.1:8b": ("gpu1", True), "qwen2.5-coder:7b": ("gpu0", True), "qwen2.5:0.5b": ("gpu0", True)}
    # 70b (109 GB) fits nowhere: last, on the GPU with the most free memory left, flagged; it
    # does not crowd out the models that fit.
    seventy = placements["llama3.3:70b"]
    assert (seventy.device, seventy.fits) == ("gpu0", False)
    assert seventy.free_before_gb == round(16.883318784 - 10.92 - 0.78, 3)  # what 7b and 0.5b left
    assert all(p.free_before_gb >= 0 for p in placements.values())
    # Two too big: the larger fills gpu0, the other finds it full (0 free, not less): gpu1.
    two = GPUScheduler(gpus).assign(["llama3.3:70b", "qwen2.5:72b"])
    assert [(p.device, p.fits, p.free_before_gb) for p in two.values()] == [("gpu0", False, 16.883),
                                                                           ("gpu1", False, 12.539)]
    small = GPUScheduler(gpus).assign(["qwen2.5:0.5b", "llama3.1:8b", "qwen2.5-coder:7b"])
    # Largest first: 8b -> gpu1 (12.54 free, tightest), 7b -> gpu0, 0.5b -> the tightest left.
    assert (small["llama3.1:8b"].device, small["qwen2.5-coder:7b"].device) == ("gpu1", "gpu0")
    assert small["qwen2.5:0.5b"].device == "gpu0" and all(p.fits for p in small.values())


def test_requests_go_to_the_server_of_each_models_gpu(tmp_path: Path, fake_llm, litellm_module) -> None:  # type: ignore[no-untyped-def]
    gpu0 = fake_llm([Reply("from gpu0")], models=["qwen2.5-coder:7b"], name="gpu0")
    gpu1 = fake_llm([Reply("from gpu1")], models=["llama3.1:8b"], name="gpu1")
    env = {"LLM_MODEL": "llama3.1:8b,qwen2.5-coder:7b", "LLM_STRATEGY": "round-robin",
           "OLLAMA_HOSTS": f"gpu0={gpu0.url},gpu1={gpu1.url}"}
    session = session_for(tmp_path, env, scheduler=GPUScheduler(probe_nvml(nvml("nvml_two_gpus.json"))))
    routed = {m.short: (m.gpu, m.api_base) for m in session.config.models}
    assert routed == {"llama3.1:8b": ("gpu1", gpu1.url), "qwen2.5-coder:7b": ("gpu0", gpu0.url)}
    texts = [session.asker.ask([{"role": "user", "content": "hi"}], lambda t: (t, "")).best.text for _ in range(4)]
    assert sorted(texts) == ["from gpu0", "from gpu0", "from gpu1", "from gpu1"]  # round robin
    assert {r.model for r in gpu0.chat_requests} == {"qwen2.5-coder:7b"}
    assert {r.model for r in gpu1.chat_requests} == {"llama3.1:8b"}


def test_the_pool_rotates_safely_between_threads() -> None:
    models = [ModelSpec(f"ollama_chat/m{i}:1b", "ollama") for i in range(3)]
    pool = OllamaModelPool(models)
    seen: list[str] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(100):
            name = pool.next().name
            with lock:
                seen.append(name)

    threads = [threading.Thread(target=take) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 600 and {seen.count(m.name) for m in models} == {200}
    assert pool.next(skip={"ollama_chat/m0:1b", "ollama_chat/m1:1b"}).name == "ollama_chat/m2:1b"
    assert pool.next(skip={m.name for m in models}) is None


def test_real_gpu_probe() -> None:
    """On this machine no GPU can be reached; where one is, NVML must report it."""
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        pytest.skip(f"no NVIDIA GPU can be reached here (nvmlInit failed: {exc})")
    pynvml.nvmlShutdown()
    gpus = probe_nvml()
    assert gpus and all(g.total_bytes > g.free_bytes >= 0 for g in gpus)


# -- token limits -------------------------------------------------------------------------------------


def test_limits_from_each_source_and_the_user_cache(tmp_path: Path, fake_llm, litellm_module) -> None:  # type: ignore[no-untyped-def]
    cache = tmp_path / "limits.json"
    fake = fake_llm(models=["llama3.1:8b"], context_length=131072)
    config = LLMConfig.load(tmp_path, env={"LLM_MODEL": "gpt-4o-mini,llama3.1:8b,claude-3-5-haiku-latest,"
                                                        "openai/my-own-model", "OLLAMA_HOST": fake.url})
    detector = TokenDetector(config, cache_path=cache)
    gpt, llama, claude, unknown = config.models
    assert (detector.limits(gpt).input, detector.limits(gpt).output) == (128000, 16384)
    assert detector.limits(gpt).source == "litellm model info"
    assert detector.limits(llama).input == 32768  # the model's 131072, capped for VRAM
    assert detector.limits(llama).source == "ollama /api/show context_length"
    assert detector.limits(claude).source == "known limits table" and detector.limits(claude).input == 200000
    assert (detector.limits(unknown).input, detector.limits(unknown).output) == (8192, 2048)
    shows = len([r for r in fake.requests if r.path == "/api/show"])
    again = TokenDetector(config, cache_path=cache)
    assert again.limits(llama).source.startswith("cache") and again.limits(llama).input == 32768
    assert len([r for r in fake.requests if r.path == "/api/show"]) == shows  # the cache answered
    ctx = LLMConfig.load(tmp_path, env={"LLM_MODEL": "llama3.1:8b", "OLLAMA_NUM_CTX": "4096",
                                        "OLLAMA_HOST": fake.url})
    assert TokenDetector(ctx, cache_path=cache).limits(ctx.models[0]).input == 4096


def test_a_prompt_that_does_not_fit_is_refused_in_one_line(tmp_path: Path) -> None:
    config = LLMConfig.load(tmp_path, env={"LLM_MODEL": "llama3.1:8b", "OLLAMA_NUM_CTX": "2048"})
    detector = TokenDetector(config, cache_path=tmp_path / "limits.json")
    detector.check_fit(config.models[0], "x = 1\n" * 100, 256)
    with pytest.raises(PromptTooLarge) as info:
        detector.check_fit(config.models[0], "x = 1\n" * 2000, 256)
    message = str(info.value)
    assert "\n" not in message and "2048" in message and "larger context" in message
