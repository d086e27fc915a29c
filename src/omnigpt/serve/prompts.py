"""Chat templates for the server: the one renderer in ``text/chat_template.py`` (what the tokenizers and fine-tuning
use too), re-exported under the names the server's modules import."""

from omnigpt.text.chat_template import (
    DEFAULT_CHAT_TEMPLATE,
    DEFAULT_STOP,
    ChatTemplate,
    TemplateError,
    load_chat_template,
    save_chat_template,
)

__all__ = ["DEFAULT_CHAT_TEMPLATE", "DEFAULT_STOP", "ChatTemplate", "TemplateError", "load_chat_template",
           "save_chat_template"]
