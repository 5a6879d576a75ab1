"""LLM backends through LlamaIndex: any OpenAI-compatible server (the embedded llama.cpp, vLLM) or Ollama."""

from __future__ import annotations

from llama_index.core.llms import LLM


def build_llm(
    backend: str, base_url: str, model: str, api_key: str = "not-needed", context_window: int = 8192,
    max_tokens: int = 512, timeout: float = 120.0,
) -> LLM:  # fmt: skip
    """`backend` 'ollama' talks Ollama's API; 'openai' and 'embedded' speak OpenAI's chat completions."""
    if backend == "ollama":
        from llama_index.llms.ollama import Ollama

        return Ollama(model=model, base_url=base_url, request_timeout=timeout, context_window=context_window,
                      additional_kwargs={"num_predict": max_tokens})  # fmt: skip
    from llama_index.llms.openai_like import OpenAILike

    return OpenAILike(
        model=model, api_base=base_url, api_key=api_key, is_chat_model=True, context_window=context_window,
        max_tokens=max_tokens, timeout=timeout, temperature=0.0, max_retries=0,
    )  # fmt: skip
