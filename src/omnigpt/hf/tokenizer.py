"""``transformers``' tokenizer API over any omnigpt tokenizer: ``PreTrainedTokenizerFast``.

What a transformers user calls, with the same keywords and results: ``tok(texts, padding=True,
padding_side="left", truncation=True, max_length=..., return_tensors="pt")`` → ``BatchEncoding`` (``input_ids``,
``attention_mask``), ``encode``/``decode``/``batch_decode``, the special tokens (``bos_token``, ``eos_token``,
``pad_token``, ``unk_token`` and their ``*_id``), ``convert_tokens_to_ids`` and ``apply_chat_template``
(``tokenize`` True/False, ``add_generation_prompt``, ``continue_final_message``, ``return_dict``, batches).

Chat templates render exactly as transformers renders them (``utils/chat_template_utils.py``): Jinja's immutable
sandbox with ``trim_blocks``/``lstrip_blocks`` and without ``keep_trailing_newline``, transformers' ``tojson``
(no HTML escaping), ``raise_exception``, ``strftime_now``, the special tokens as template variables; the rendered
text is encoded with special-token strings parsed as special tokens and no BOS added (the template writes it).

Deviations on purpose: options that would change the result and are not implemented (``text_pair``,
``return_offsets_mapping``, ``return_assistant_tokens_mask``, ``sanitize_control_tokens``, ...) raise instead of
being ignored; ``from_pretrained`` never touches the network (``hf/sources.py`` resolves names).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from omnigpt.hf.sources import gguf_reader, locate
from omnigpt.text.chat_template import ChatTemplateError, render_chat
from omnigpt.text.tokenizer import CONFIG_FILE, Tokenizer, TokenizerError, load_tokenizer

SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # transformers 5 saves the template beside tokenizer_config.json
# from_pretrained options with nothing to do here (offline, local files, no remote code).
_HARMLESS = {"local_files_only", "trust_remote_code", "cache_dir", "use_fast", "force_download", "resume_download",
             "legacy", "clean_up_tokenization_spaces"}
_SETTINGS = {*SPECIAL_KEYS, "chat_template", "model_max_length", "padding_side", "truncation_side", "add_bos_token"}


class BatchEncoding(dict):
    """``input_ids`` and ``attention_mask`` as a dict with attribute access (``**inputs`` feeds a model)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: str | torch.device) -> BatchEncoding:
        return BatchEncoding({k: v.to(device) if isinstance(v, Tensor) else v for k, v in self.items()})


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict with ``content``."""
    value = value.get("content") if isinstance(value, dict) else value
    return value if isinstance(value, str) else None


class PreTrainedTokenizerFast:
    """transformers' tokenizer interface over an omnigpt ``Tokenizer`` (``self.tokenizer``).

    Special-token text such as ``<|im_start|>`` in the input is parsed as the special token, as in transformers
    (omnigpt's own ``Tokenizer.encode`` treats it as text unless told otherwise)."""

    model_input_names = ("input_ids", "attention_mask")

    def __init__(self, tokenizer: Tokenizer, *, bos_token: str | None = None, eos_token: str | None = None,
                 unk_token: str | None = None, pad_token: str | None = None, chat_template: str | None = None,
                 model_max_length: int | None = None, padding_side: str = "right", truncation_side: str = "right",
                 add_bos_token: bool = False) -> None:
        self.tokenizer = tokenizer
        self.bos_token, self.eos_token, self.unk_token, self.pad_token = bos_token, eos_token, unk_token, pad_token
        self.chat_template = chat_template
        self.model_max_length = model_max_length if model_max_length is not None else int(1e30)  # HF's "no limit"
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.add_bos_token = add_bos_token  # __call__/encode with add_special_tokens=True prepend bos_token

    # -- loading and saving ------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, gguf_file: str | None = None,
                        **kwargs: Any) -> PreTrainedTokenizerFast:
        """A local directory, a ``.gguf`` file (or a directory + ``gguf_file=``), an offline model name or a cached
        Hub id (``hf/sources.py``). Special tokens, ``padding_side``, ``model_max_length`` and ``chat_template``
        may be overridden as in transformers; options that would change the result raise."""
        kind, path = locate(name_or_path, gguf_file)
        return cls.from_directory(path, **kwargs) if kind == "dir" else cls.from_gguf(path, **kwargs)

    @classmethod
    def from_gguf(cls, path: str | Path, **kwargs: Any) -> PreTrainedTokenizerFast:
        """The tokenizer a GGUF file describes, with its bos/eos/pad tokens and chat template."""
        from omnigpt.checkpoints.gguf import read_fields
        from omnigpt.checkpoints.gguf_tokenizer import GGUFTokenizer

        path = Path(path)
        reader = gguf_reader(path)
        tok = GGUFTokenizer.from_gguf(path, reader)
        unk = read_fields(reader, path, ["tokenizer.ggml.unknown_token_id"]).get("tokenizer.ggml.unknown_token_id")
        settings: dict[str, Any] = {"chat_template": tok.chat_template, "add_bos_token": tok.add_bos}
        for key, idx in (("bos_token", tok.bos_token_id), ("eos_token", tok.eos_token_id),
                         ("unk_token", unk), ("pad_token", tok.pad_token_id)):
            settings[key] = None if not isinstance(idx, int) or not 0 <= idx < tok.vocab_size \
                else tok.id_to_token(idx)
        return cls.build(tok, settings, **kwargs)

    @classmethod
    def from_directory(cls, directory: str | Path, **kwargs: Any) -> PreTrainedTokenizerFast:
        """The tokenizer saved in ``directory``, with the settings of its ``tokenizer_config.json`` and
        ``chat_template.jinja`` (keyword arguments override them)."""
        d = Path(directory)
        settings = cls.read_settings(d)
        return cls.build(load_tokenizer(d), settings, **kwargs)

    @classmethod
    def build(cls, tokenizer: Tokenizer, settings: dict[str, Any], **kwargs: Any) -> PreTrainedTokenizerFast:
        """``cls(tokenizer, **settings)`` with ``kwargs`` (from_pretrained's overrides) checked and applied."""
        unknown = sorted(set(kwargs) - _SETTINGS - _HARMLESS)
        if unknown:
            raise TypeError(f"{cls.__name__}.from_pretrained: unsupported options {unknown}")
        settings = {**settings, **{k: v for k, v in kwargs.items() if k in _SETTINGS}}
        return cls(tokenizer, **settings)

    @staticmethod
    def read_settings(directory: Path) -> dict[str, Any]:
        """Special tokens, chat template and padding settings from transformers' tokenizer files."""
        settings: dict[str, Any] = {}
        path = directory / CONFIG_FILE
        if path.is_file():
            try:
                cfg = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise TokenizerError(f"{path}: not valid JSON ({e})") from None
            if not isinstance(cfg, dict):
                raise TokenizerError(f"{path}: must hold a JSON object")
            for key in SPECIAL_KEYS:
                if key in cfg:
                    settings[key] = _token_text(cfg[key])
            template = cfg.get("chat_template")
            if isinstance(template, list):  # named templates: transformers uses "default"
                template = next((t.get("template") for t in template
                                 if isinstance(t, dict) and t.get("name") == "default"), None)
            if isinstance(template, str):
                settings["chat_template"] = template
            if isinstance(cfg.get("model_max_length"), int):
                settings["model_max_length"] = cfg["model_max_length"]
            for key in ("padding_side", "truncation_side"):
                if cfg.get(key) in ("left", "right"):
                    settings[key] = cfg[key]
            if isinstance(cfg.get("add_bos_token"), bool):
                settings["add_bos_token"] = cfg["add_bos_token"]
        if (directory / CHAT_TEMPLATE_FILE).is_file():
            settings["chat_template"] = (directory / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
        return settings

    def save_pretrained(self, directory: str | Path) -> Path:
        """The tokenizer's files plus transformers' settings (special tokens, template, padding side)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(d)
        path = d / CONFIG_FILE
        cfg = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        cfg.update({k: getattr(self, k) for k in SPECIAL_KEYS}, padding_side=self.padding_side,
                   truncation_side=self.truncation_side, add_bos_token=self.add_bos_token)
        if self.model_max_length < int(1e30):
            cfg["model_max_length"] = self.model_max_length
        if self.chat_template is not None:
            cfg["chat_template"] = self.chat_template
        path.write_text(json.dumps(cfg, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return d

    # -- vocabulary --------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def __len__(self) -> int:
        return self.tokenizer.vocab_size

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.tokenizer.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def unk_token_id(self) -> int | None:
        return self._id(self.unk_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id(self.pad_token)

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """The special tokens that are set, by role (also the chat template's variables)."""
        return {k: v for k in SPECIAL_KEYS if (v := getattr(self, k)) is not None}

    @property
    def all_special_tokens(self) -> list[str]:
        return list(dict.fromkeys([*self.special_tokens_map.values(), *self.tokenizer.special_tokens]))

    @property
    def all_special_ids(self) -> list[int]:
        return [self.tokenizer.token_to_id(t) for t in self.all_special_tokens]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        if isinstance(tokens, str):
            return self.tokenizer.token_to_id(tokens)
        return [self.tokenizer.token_to_id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        if isinstance(ids, int):
            return self.tokenizer.id_to_token(ids)
        return [self.tokenizer.id_to_token(int(i)) for i in ids]

    # -- encode / decode ---------------------------------------------------------------------------------------
    def _ids(self, text: str, add_special_tokens: bool) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str or a list of str, got {type(text).__name__}")
        ids = self.tokenizer.encode(text, allowed_special=True)
        if add_special_tokens and self.add_bos_token and self.bos_token_id is not None:
            ids = [self.bos_token_id, *ids]
        return ids

    def encode(self, text: str, add_special_tokens: bool = True, return_tensors: str | None = None,
               **kwargs: Any) -> list[int] | Tensor:
        """Token ids of one text (a (1, T) tensor with ``return_tensors="pt"``); ``truncation``/``max_length`` as
        in ``__call__``."""
        enc = self(text, add_special_tokens=add_special_tokens, return_tensors=return_tensors,
                   return_attention_mask=False, **kwargs)
        return enc["input_ids"]

    def decode(self, token_ids: Any, skip_special_tokens: bool = False, **kwargs: Any) -> str:
        """Text of one sequence of ids (a list, a 1-D tensor or one id)."""
        _check_decode_options(kwargs)
        if isinstance(token_ids, Tensor):
            token_ids = token_ids.tolist()
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False, **kwargs: Any) -> list[str]:
        rows = sequences.tolist() if hasattr(sequences, "tolist") else sequences
        return [self.decode(r, skip_special_tokens, **kwargs) for r in rows]

    def __call__(self, text: str | Sequence[str], text_pair: Any = None, *, add_special_tokens: bool = True,
                 padding: bool | str = False, truncation: bool | str | None = None, max_length: int | None = None,
                 return_tensors: str | None = None, return_attention_mask: bool | None = None,
                 padding_side: str | None = None, pad_to_multiple_of: int | None = None,
                 return_token_type_ids: bool | None = None, verbose: bool = True, **kwargs: Any) -> BatchEncoding:
        """Token ids (and attention mask) of one text or a batch. ``padding``: True/"longest" or "max_length"
        (pads need ``pad_token``) on ``padding_side``; ``truncation`` to ``max_length`` (default
        ``model_max_length``) on ``truncation_side``; ``return_tensors="pt"`` gives (B, T) LongTensors."""
        if text_pair is not None or return_token_type_ids:
            raise ValueError("text pairs and token_type_ids are not supported by omnigpt's tokenizers")
        if kwargs:
            raise TypeError(f"{type(self).__name__}.__call__: unsupported options {sorted(kwargs)}")
        side = padding_side or self.padding_side
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        rows = [self._ids(t, add_special_tokens) for t in texts]
        if truncation not in (None, False, "do_not_truncate"):
            if truncation not in (True, "longest_first", "only_first"):
                raise ValueError(f"truncation={truncation!r} is not supported (True, 'longest_first', 'only_first')")
            limit = max_length if max_length is not None else self.model_max_length
            rows = [r[:limit] if self.truncation_side == "right" else r[len(r) - limit:] if len(r) > limit else r
                    for r in rows]
        masks = [[1] * len(r) for r in rows]
        if padding not in (False, None, "do_not_pad"):
            if padding not in (True, "longest", "max_length"):
                raise ValueError(f"padding={padding!r} is not supported (True, 'longest', 'max_length', False)")
            if self.pad_token_id is None:
                raise ValueError("Asking to pad but the tokenizer has no pad token: set tokenizer.pad_token "
                                 "(e.g. tokenizer.pad_token = tokenizer.eos_token)")
            width = max(map(len, rows), default=0)
            if padding == "max_length":
                width = max_length if max_length is not None else self.model_max_length
            if pad_to_multiple_of:
                width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
            pad = self.pad_token_id
            for i, r in enumerate(rows):
                n = max(0, width - len(r))
                rows[i] = r + [pad] * n if side == "right" else [pad] * n + r
                masks[i] = masks[i] + [0] * n if side == "right" else [0] * n + masks[i]
        out_rows: Any = rows
        out_masks: Any = masks
        if return_tensors is not None:
            if return_tensors not in ("pt", "np"):
                raise ValueError(f"return_tensors={return_tensors!r} is not supported (use 'pt' or 'np')")
            if len({len(r) for r in rows}) > 1:
                raise ValueError("Unable to create a tensor from rows of different lengths: pass padding=True "
                                 "(and set tokenizer.pad_token)")
            out_rows = torch.tensor(rows, dtype=torch.long).reshape(len(rows), -1)  # (B, T)
            out_masks = torch.tensor(masks, dtype=torch.long).reshape(len(rows), -1)  # (B, T)
            if return_tensors == "np":
                out_rows, out_masks = out_rows.numpy(), out_masks.numpy()
        elif single:
            out_rows, out_masks = rows[0], masks[0]
        enc = BatchEncoding(input_ids=out_rows)
        if return_attention_mask is not False:
            enc["attention_mask"] = out_masks
        return enc

    # -- chat --------------------------------------------------------------------------------------------------
    def apply_chat_template(self, conversation: Sequence[dict[str, Any]] | Sequence[Sequence[dict[str, Any]]],
                            tools: list[dict[str, Any]] | None = None, documents: list[dict[str, Any]] | None = None,
                            chat_template: str | None = None, add_generation_prompt: bool = False,
                            continue_final_message: bool = False, tokenize: bool = True,
                            padding: bool | str = False, truncation: bool = False, max_length: int | None = None,
                            return_tensors: str | None = None, return_dict: bool = True,
                            tokenizer_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        """transformers' ``apply_chat_template``: the rendered prompt text (``tokenize=False``), its ids
        (``return_dict=False``), or a ``BatchEncoding`` (the default, as in transformers 5). A list of
        conversations gives a batch. Extra keyword arguments are template variables."""
        for key in ("return_assistant_tokens_mask", "sanitize_control_tokens"):
            if kwargs.pop(key, False):
                raise ValueError(f"apply_chat_template: {key}=True is not supported by omnigpt")
        source = chat_template or self.chat_template
        if source is None:
            raise ValueError("this tokenizer has no chat template (tokenizer.chat_template is None); pass "
                             "chat_template=... or use a chat model's tokenizer")
        if not conversation:
            raise ValueError("Cannot apply chat template to an empty conversation. Provide at least one message.")
        batched = isinstance(conversation[0], (list, tuple))
        conversations = [list(c) for c in conversation] if batched else [list(conversation)]  # type: ignore[arg-type]
        if continue_final_message and add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt are not compatible")
        variables = {**self.special_tokens_map, **kwargs}
        texts = [render_chat(source, c, tools=tools, documents=documents, add_generation_prompt=add_generation_prompt,
                             continue_final_message=continue_final_message, **variables) for c in conversations]
        if not tokenize:
            return texts if batched else texts[0]
        out = self(texts if batched else texts[0], padding=padding, truncation=truncation, max_length=max_length,
                   add_special_tokens=False, return_tensors=return_tensors, **(tokenizer_kwargs or {}))
        return out if return_dict else out["input_ids"]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.tokenizer!r}, eos_token={self.eos_token!r}, "
                f"pad_token={self.pad_token!r}, padding_side={self.padding_side!r})")


def _check_decode_options(kwargs: dict[str, Any]) -> None:
    if kwargs.get("clean_up_tokenization_spaces"):
        raise ValueError("clean_up_tokenization_spaces=True is not supported (omnigpt decodes bytes exactly)")
    unknown = sorted(set(kwargs) - {"clean_up_tokenization_spaces"})
    if unknown:
        raise TypeError(f"decode: unsupported options {unknown}")


__all__ = ["BatchEncoding", "ChatTemplateError", "PreTrainedTokenizerFast", "render_chat"]
