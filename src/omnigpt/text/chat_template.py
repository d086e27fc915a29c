"""Chat templates: how a list of chat messages becomes the one prompt string a decoder continues.

A model carries its template the way Hugging Face does: a ``chat_template.jinja`` file, or a ``chat_template``
string in ``tokenizer_config.json`` (a GGUF file: ``tokenizer.chat_template`` in its metadata). Templates are
Jinja2, rendered exactly as ``transformers`` renders them (``render_jinja_template``): Jinja's immutable sandbox,
``trim_blocks`` + ``lstrip_blocks``, the ``loopcontrols`` extension, a ``tojson`` that does not escape HTML,
``raise_exception`` and ``strftime_now``. One renderer for every caller: the HF-style tokenizers
(``apply_chat_template``), fine-tuning (``apps/sft/task.py``) and the server, so training, ``generate --chat`` and
``/v1/chat/completions`` see the same prompt text.

Models without a template get ``DEFAULT_CHAT_TEMPLATE``: plain "Role: text" lines ending in "Assistant:", which any
byte-level tokenizer can encode and a plain language model has seen in its data; with it the server also stops at
the next "\nUser:" so the model does not write the user's turn too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
DEFAULT_STOP = ["\nUser:"]


class ChatTemplateError(ValueError):
    """The template refused the messages (``raise_exception``) or could not be compiled or rendered."""


@lru_cache(maxsize=16)
def _compile(source: str) -> Any:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment  # torch depends on jinja2

    def raise_exception(message: str) -> None:
        raise ChatTemplateError(str(message))

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:  # Jinja's own escapes HTML characters; transformers' does not
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"the chat template does not compile: {e}") from None


_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "  # transformers' marker for the end of the message to continue


def render_chat(source: str, messages: list[dict[str, Any]], *, add_generation_prompt: bool = False,
                continue_final_message: bool = False, **variables: Any) -> str:
    """One conversation rendered with chat template ``source`` (transformers' ``render_jinja_template``).
    ``continue_final_message`` cuts the prompt right after the last message's text so the model continues it."""
    import jinja2

    messages = [{k: v for k, v in m.items() if v is not None} for m in messages]  # as transformers normalises them
    if any(not isinstance(m.get("role"), str) for m in messages):
        raise ChatTemplateError("every chat message needs a 'role' string")
    final = None
    if continue_final_message:
        final = messages[-1].get("content")
        if not isinstance(final, str):
            raise ChatTemplateError("continue_final_message needs the final message's 'content' as text")
        messages[-1] = {**messages[-1], "content": final + _CONTINUE_TAG}
    try:
        text = _compile(source).render(messages=messages, add_generation_prompt=add_generation_prompt, **variables)
    except ChatTemplateError:
        raise
    except (jinja2.TemplateError, TypeError, ValueError, KeyError) as e:
        raise ChatTemplateError(f"the chat template failed to render these messages: {type(e).__name__}: {e}") \
            from None
    if final is not None:
        tag = text.rfind(_CONTINUE_TAG.strip())
        if tag < 0 or final.strip() not in text:
            raise ChatTemplateError("continue_final_message: the template dropped the final message's text")
        text = text[:tag] if text[tag:tag + len(_CONTINUE_TAG)] == _CONTINUE_TAG else text[:tag].rstrip()
    return text


@dataclass
class ChatTemplate:
    """A chat template plus the stop strings and special tokens that go with it."""

    source: str = DEFAULT_CHAT_TEMPLATE
    stop: list[str] = field(default_factory=list)
    bos_token: str = ""
    eos_token: str = ""

    def __post_init__(self) -> None:
        _compile(self.source)  # a template that does not compile fails here, when the model loads

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """``messages`` are ``{"role", "content"}`` dicts with text content."""
        return render_chat(self.source, messages, add_generation_prompt=add_generation_prompt,
                           bos_token=self.bos_token, eos_token=self.eos_token)


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


TemplateError = ChatTemplateError  # the name the server has always used

__all__ = ["DEFAULT_CHAT_TEMPLATE", "DEFAULT_STOP", "ChatTemplate", "ChatTemplateError", "TemplateError",
           "load_chat_template", "render_chat", "save_chat_template"]
