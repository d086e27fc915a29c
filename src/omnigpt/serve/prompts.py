"""Chat templates: how a list of chat messages becomes the one prompt string a decoder continues.

A model directory carries its template the way Hugging Face does: a ``chat_template.jinja`` file, or a
``chat_template`` string in ``tokenizer_config.json``. Templates are Jinja2, rendered in Jinja's immutable sandbox
(as ``transformers`` does) with ``messages``, ``add_generation_prompt``, ``bos_token``/``eos_token`` and
``raise_exception``. Models without one get ``DEFAULT_CHAT_TEMPLATE``: plain "Role: text" lines ending in
"Assistant:", which any byte-level tokenizer can encode and a plain language model has seen in its data; with it
the server also stops at the next "\\nUser:" so the model does not write the user's turn too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
DEFAULT_STOP = ["\nUser:"]


class TemplateError(ValueError):
    """The chat template refused the messages (``raise_exception``) or failed to render them."""


@dataclass
class ChatTemplate:
    """A Jinja chat template plus the stop strings that go with it."""

    source: str = DEFAULT_CHAT_TEMPLATE
    stop: list[str] = field(default_factory=list)
    bos_token: str = ""
    eos_token: str = ""

    def __post_init__(self) -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment  # torch depends on jinja2; load it lazily anyway

        def raise_exception(message: str) -> None:
            raise TemplateError(str(message))

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
        env.globals["raise_exception"] = raise_exception
        self._template = env.from_string(self.source)

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """``messages`` are ``{"role", "content"}`` dicts with text content."""
        try:
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         bos_token=self.bos_token, eos_token=self.eos_token)
        except TemplateError:
            raise
        except Exception as e:  # a template bug must not become a 500 with a traceback; say what failed
            raise TemplateError(f"the model's chat template failed to render these messages: "
                                f"{type(e).__name__}") from None


def load_chat_template(model_dir: str | Path, eos_token: str = "") -> ChatTemplate:
    """The template saved with the model (``chat_template.jinja`` or ``tokenizer_config.json``), else the default."""
    d = Path(model_dir)
    source: str | None = None
    if (d / "chat_template.jinja").is_file():
        source = (d / "chat_template.jinja").read_text(encoding="utf-8")
    elif (d / "tokenizer_config.json").is_file():
        try:
            cfg = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{d / 'tokenizer_config.json'}: not valid JSON ({e})") from None
        tpl = cfg.get("chat_template") if isinstance(cfg, dict) else None
        if isinstance(tpl, list):  # HF allows a list of named templates; take "default"
            tpl = next((t.get("template") for t in tpl if isinstance(t, dict) and t.get("name") == "default"), None)
        source = tpl if isinstance(tpl, str) else None
    if source is None:
        return ChatTemplate(DEFAULT_CHAT_TEMPLATE, stop=list(DEFAULT_STOP), eos_token=eos_token)
    return ChatTemplate(source, eos_token=eos_token)


def save_chat_template(model_dir: str | Path, source: str = DEFAULT_CHAT_TEMPLATE) -> Path:
    """Write ``chat_template.jinja`` into a model directory (what ``load_chat_template`` reads first)."""
    path = Path(model_dir) / "chat_template.jinja"
    path.write_text(source, encoding="utf-8")
    return path
