"""The processor of a multimodal model whose decoder is a pretrained chat model (LLaVA-1.5's recipe).

LLaVA-1.5 prompts its Vicuna decoder in the decoder's own conversation format, the image placeholder inside the
user turn ("USER: <image>\\nWhat is in this picture? ASSISTANT: …"). ``ChatProcessor`` does the same for any decoder
that ships a chat template (SmolLM2-Instruct's ChatML): the turns are rendered by the template, the text between
placeholders is encoded with the template's special tokens parsed (``<|im_start|>`` becomes its id, as
``transformers``' ``apply_chat_template`` does), and each ``<|image|>`` expands to the tower's tokens. Differences
from ``text.processors.Processor``, which it extends:

* no begin/end markers around an image (LLaVA-1.5 has none, and a pretrained decoder has no embedding for them);
* the placeholder tokens it registers get ids past the decoder's vocabulary: their positions are always replaced
  by projected image vectors (``models/multimodal.py``), so the decoder keeps its vocabulary;
* the answer ends with the template's end-of-turn token (``<|im_end|>``), which is also where generation stops.

``chat_processor.json`` (the template and the system prompt) is saved beside ``processor_config.json``;
``load_processor`` returns a ``ChatProcessor`` when it is there and a plain ``Processor`` otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omnigpt.text.chat_template import ChatTemplate
from omnigpt.text.processors import AUDIO_TOKEN, IMAGE_TOKEN, MULTIMODAL_TOKENS, Processor, ProcessorConfig

CHAT_PROCESSOR = "chat_processor.json"


class ChatProcessor(Processor):
    """A ``Processor`` whose prompts are a chat decoder's own turns (see the module docstring)."""

    def __init__(self, tokenizer: Any, config: ProcessorConfig | None = None, template: str = "",
                 system: str | None = None) -> None:
        super().__init__(tokenizer, config)
        if not template:
            raise ValueError("ChatProcessor needs the decoder's chat template")
        self.template, self.system = template, system
        self._chat = ChatTemplate(template)
        # The template's own markers (<|im_start|>, <|im_end|>) are parsed in prompt text; the media tokens never
        # are (placeholders are split out before encoding).
        specials = getattr(tokenizer, "special_tokens", None) or {}
        self.allowed = frozenset(t for t in specials if t not in MULTIMODAL_TOKENS)

    def messages(self, turns: Sequence[dict[str, str]], system: str | None = None) -> list[dict[str, str]]:
        """LLaVA turns (``from`` human/gpt) → chat messages, with the system prompt (``system``, else the one set
        here) first when there is one."""
        system = system or self.system
        head = [{"role": "system", "content": system}] if system else []
        return head + [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]}
                       for t in turns]

    def chat_prompt(self, turns: Sequence[dict[str, str]], system: str | None = None) -> str:
        """The rendered prompt for ``turns`` (the last one the user's), ending with the assistant's header."""
        return self._chat.render(self.messages(turns, system), add_generation_prompt=True)

    def conversation_prompt(self, conv: dict[str, Any]) -> tuple[str, str]:
        """(prompt, answer) of a LLaVA conversation: every turn before the last is context, the last the answer."""
        turns = conv["conversations"]
        return self.chat_prompt(turns[:-1]), turns[-1]["value"]

    def encode_sample(self, text: str, n_images: int, n_audio: int, index: int = 0) -> list[int]:
        parts = self._split.split(text)
        if parts.count(IMAGE_TOKEN) != n_images or parts.count(AUDIO_TOKEN) != n_audio:
            raise ValueError(f"sample {index}: text has {parts.count(IMAGE_TOKEN)} {IMAGE_TOKEN} and "
                             f"{parts.count(AUDIO_TOKEN)} {AUDIO_TOKEN} placeholders, but {n_images} images and "
                             f"{n_audio} audio clips were given")
        ids: list[int] = []
        for part in parts:
            if part == IMAGE_TOKEN:
                ids += [self.ids[IMAGE_TOKEN]] * self.config.image_tokens
            elif part == AUDIO_TOKEN:
                ids += [self.ids[AUDIO_TOKEN]] * self.config.audio_tokens
            elif part:
                ids += self.tokenizer.encode(part, allowed_special=self.allowed)
        return ids

    def save_pretrained(self, directory: str | Path) -> None:
        super().save_pretrained(directory)
        (Path(directory) / CHAT_PROCESSOR).write_text(
            json.dumps({"chat_template": self.template, "system": self.system}, indent=1) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, tokenizer: Any = None) -> ChatProcessor:
        plain = Processor.from_pretrained(directory, tokenizer)
        path = Path(directory) / CHAT_PROCESSOR
        try:
            saved = json.loads(path.read_text())
            return cls(plain.tokenizer, plain.config, saved["chat_template"], saved.get("system"))
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a valid chat processor file: {e}") from e


def load_processor(directory: str | Path) -> Processor:
    """The processor saved with a multimodal checkpoint: a ``ChatProcessor`` when it has ``chat_processor.json``."""
    if (Path(directory) / CHAT_PROCESSOR).is_file():
        return ChatProcessor.from_pretrained(directory)
    return Processor.from_pretrained(directory)
