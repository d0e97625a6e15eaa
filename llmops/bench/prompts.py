"""Benchmark prompts: varied chat questions, deterministic, no downloads."""

from __future__ import annotations

_TOPICS = [
    "the water cycle", "how vaccines work", "the history of the printing press", "black holes",
    "photosynthesis", "the French Revolution", "how a CPU executes instructions", "plate tectonics",
    "the causes of inflation", "how bees communicate", "the rules of chess", "the life of Marie Curie",
    "why the sky is blue", "how airplanes fly", "the Roman Empire", "machine learning",
    "the human immune system", "renewable energy", "the Silk Road", "how compilers work",
    "ocean tides", "the theory of evolution", "the invention of the telephone", "climate change",
    "how the internet routes packets", "the Great Wall of China", "DNA replication", "volcanoes",
    "the stock market", "how memory works in the brain", "the Moon landing", "quantum computing",
]
_ASKS = ["Explain {t} in simple terms.", "Write a short paragraph about {t}.",
         "What are three interesting facts about {t}?", "Summarize {t} for a student."]


def chat_prompts(n: int) -> list[list[dict[str, str]]]:
    """n single-turn conversations, all different."""
    out = []
    for i in range(n):
        topic = _TOPICS[i % len(_TOPICS)]
        ask = _ASKS[(i // len(_TOPICS) + i) % len(_ASKS)]
        out.append([{"role": "user", "content": ask.format(t=topic)}])
    return out
