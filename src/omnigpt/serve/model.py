"""The served model and the request → prompt path: semantic checks, chat template, capped tokenization, limits.

Schemas (schemas.py) check types and ranges; this module checks what needs the model: the model name, features
this server does not implement, content parts the model cannot take (image/audio parts sent to a text-only model
get a 400 naming the part), prompt size (capped in characters *before* tokenizing, since tokenizing megabytes
costs seconds), token ids against the vocabulary, and ``prompt + max_tokens`` against the context, with
OpenAI's ``context_length_exceeded`` wording. Every failure is an ``APIError`` (a 400/404), never a 5xx.

A served model is a checkpoint directory, a ``.gguf`` file, or an offline name (``smollm2-135m-instruct``) that
``checkpoints.registry.from_pretrained`` resolves; a GGUF model brings its own chat template. A rendered chat prompt
is encoded with its special tokens (``<|im_start|>`` ...) parsed, as ``transformers``' ``apply_chat_template`` does;
a message whose text contains one of those token strings is refused (400) instead of letting it forge a turn.
A multimodal checkpoint answers messages with ``image_url`` (data URLs) / ``input_audio`` parts through
``generate.multimodal`` (``multimodal_prompt`` here; app.py runs it) and text-only messages on its decoder. One
whose decoder is a pretrained chat model (a ``llava`` run: ``data.llava.ChatProcessor``) is prompted through its
chat template, system message included, the placeholders inside the user turn, exactly as it was trained.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from omnigpt.serve import schemas as S
from omnigpt.serve.engine import SamplingParams
from omnigpt.serve.errors import APIError, bad_request
from omnigpt.serve.prompts import (
    DEFAULT_CHAT_TEMPLATE,
    DEFAULT_STOP,
    ChatTemplate,
    TemplateError,
    load_chat_template,
)
from omnigpt.serve.settings import ServeSettings

MAX_CHARS_PER_TOKEN = 32  # character cap on a prompt before tokenizing: context length × this
MAX_PROMPTS = 64  # prompts in one /v1/completions request (each becomes n rows)


@dataclass
class ServedModel:
    """A model ready to serve: weights in eval mode, tokenizer, chat template and the limits they imply."""

    name: str
    model: nn.Module
    tokenizer: Any  # encode(text) -> list[int], decode(ids) -> str, eos_token_id
    chat_template: ChatTemplate = field(default_factory=ChatTemplate)
    modalities: list[str] = field(default_factory=lambda: ["text"])
    created: int = field(default_factory=lambda: int(time.time()))
    multimodal: Any = None  # the whole MultimodalGPT when ``model`` is its decoder (image/audio turns go to it)
    processor: Any = None  # its Processor (images, clips → model inputs)

    @property
    def block_size(self) -> int:
        return int(self.model.config.block_size)

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    @property
    def stop_token_ids(self) -> list[int]:
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return [] if eos is None else [int(eos)]

    def card(self) -> S.ModelCard:
        return S.ModelCard(id=self.name, created=self.created, context_length=self.block_size,
                           modalities=list(self.modalities))

    def check_name(self, name: str) -> None:
        """404 unless ``name`` is this model (names are compared, never used as paths)."""
        if name != self.name:
            shown = name if len(name) <= 64 else name[:64] + "..."
            raise APIError(404, f"The model '{shown}' does not exist. This server serves '{self.name}'.",
                           param="model", code="model_not_found")


def load_served_model(model: str | Path, name: str | None = None, device: str = "cpu",
                      dtype: str | None = None) -> ServedModel:
    """Load a model to serve through ``omnigpt.load``: a checkpoint directory (config.json + model.safetensors +
    tokenizer) or a training run's newest one, a ``.gguf`` file, or an offline name (``smollm2-135m-instruct``).
    A multimodal checkpoint serves its decoder for text turns and the whole model for image/audio turns."""
    import torch

    from omnigpt.checkpoints.pretrained import GPT_TYPES, model_type
    from omnigpt.checkpoints.registry import MODELS, hf_cache_dir, load
    from omnigpt.checkpoints.state import resolve_checkpoint
    from omnigpt.kernels.precision import weights_dtype
    from omnigpt.models.gpt import GPT
    from omnigpt.models.multimodal import MultimodalGPT

    if dtype is not None and dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    torch_dtype = torch.float16 if dtype == "float16" else weights_dtype(dtype or "float32", device)
    path = Path(model)
    if not path.exists() and str(model) not in MODELS and hf_cache_dir(str(model)) is None:
        raise FileNotFoundError(f"model directory not found: {model} (and not an offline model name; offline "
                                f"models: {', '.join(MODELS)})")
    ckpt = resolve_checkpoint(path) if path.is_dir() else None  # a run directory serves its newest checkpoint
    options = {"head": "lm"} if ckpt is not None and model_type(ckpt) in (*GPT_TYPES, "omnigpt") else {}
    try:
        loaded = load(model, device, dtype=torch_dtype, **options)
    except OSError as e:
        raise FileNotFoundError(str(e)) from None
    lm, tokenizer, multimodal, processor = loaded.model, loaded.preprocessor, None, None
    if isinstance(lm, MultimodalGPT):  # its decoder answers text turns; the tokenizer is the processor's
        multimodal, processor = lm, loaded.preprocessor  # a ChatProcessor when the decoder is a chat model
        lm, tokenizer = multimodal.language_model, processor.tokenizer
    if not isinstance(lm, GPT) or not hasattr(tokenizer, "encode"):
        raise ValueError(f"{model!r} is not a text generator ({type(lm).__name__}); it cannot answer chat. "
                         f"Speech and embedding models are served on first use at /v1/audio/transcriptions and "
                         f"/v1/embeddings")
    eos_id, bos_id = tokenizer.eos_token_id, getattr(tokenizer, "bos_token_id", None)
    eos = tokenizer.decode([eos_id]) if eos_id is not None else ""
    bos = tokenizer.decode([bos_id]) if bos_id is not None else ""
    if ckpt is not None:
        chat = load_chat_template(ckpt, eos_token=eos)
    elif loaded.template:
        chat = ChatTemplate(loaded.template, eos_token=eos, bos_token=bos)
    else:
        chat = ChatTemplate(DEFAULT_CHAT_TEMPLATE, stop=list(DEFAULT_STOP), eos_token=eos)
    modalities = ["text"]
    if multimodal is not None:
        modalities += [m for m, part in (("image", "vision"), ("audio", "audio"))
                       if getattr(multimodal.config, part, None) is not None]
    return ServedModel(name=name or (path.resolve().name if ckpt is not None else path.name), model=lm,
                       tokenizer=tokenizer, chat_template=chat, modalities=modalities, multimodal=multimodal,
                       processor=processor)


# ------------------------------------------------------------------------------------------------------------
# Request checks


def _unsupported(param: str, what: str) -> APIError:
    return bad_request(f"'{param}' is not supported by this server: {what}.", param=param, code="unsupported_parameter")


def _check_common(body: S.CompletionRequest | S.ChatCompletionRequest, settings: ServeSettings, rows: int) -> None:
    if body.logit_bias:
        raise _unsupported("logit_bias", "remove it or send an empty object")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name):
            raise _unsupported(name, "use 'repetition_penalty' (e.g. 1.2) instead")
    if len(body.stop_list()) > S.MAX_STOP:
        raise bad_request(f"'stop' accepts at most {S.MAX_STOP} sequences.", param="stop", code="invalid_value")
    if rows > settings.max_batch_size:
        raise bad_request(f"This request asks for {rows} sequences (prompts × n); this server generates at most "
                          f"{settings.max_batch_size} per request.", param="n", code="invalid_value")


MIN_TEMPERATURE = 1e-5  # below this, logits / T overflows float32 for extreme values: treat as greedy (T = 0)
MIN_TOP_P = 1e-6  # below float32's resolution p rounds to 0 and the nucleus would drop every token; keep the top one


def sampling_params(body: S.CompletionRequest | S.ChatCompletionRequest) -> SamplingParams:
    """The request's sampling controls as ``generate()`` takes them, with OpenAI's defaults (temperature 1, no
    top-p/top-k cut). Values the API allows but float32 cannot compute with are mapped to what they mean."""
    temperature = 1.0 if body.temperature is None else body.temperature
    if temperature < MIN_TEMPERATURE:
        temperature = 0.0
    top_p = None if body.top_p is None else max(body.top_p, MIN_TOP_P)
    return SamplingParams(temperature=temperature, top_k=body.top_k or None, top_p=top_p,
                          repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
                          seed=body.seed, ignore_eos=bool(body.ignore_eos))


def _check_chars(n_chars: int, served: ServedModel, param: str) -> None:
    cap = served.block_size * MAX_CHARS_PER_TOKEN
    if n_chars > cap:
        raise bad_request(f"This model's maximum context length is {served.block_size} tokens, and your {param} has "
                          f"{n_chars} characters (more than {cap}, the most that could fit). Please shorten it.",
                          param=param, code="context_length_exceeded")


def _encode(served: ServedModel, text: str, param: str, special: bool = False) -> list[int]:
    try:
        if special:  # a rendered chat prompt: its special-token strings are the template's markers
            try:
                ids = [int(t) for t in served.tokenizer.encode(text, allowed_special=True)]
            except TypeError:  # a tokenizer without allowed_special
                ids = [int(t) for t in served.tokenizer.encode(text)]
        else:
            ids = [int(t) for t in served.tokenizer.encode(text)]
    except ValueError as e:  # e.g. a character a char-level vocabulary lacks: the tokenizer's message names it
        raise bad_request(f"The {param} could not be tokenized: {str(e)[:200]}", param=param,
                          code="invalid_value") from None
    except Exception:  # any other tokenizer failure is still about this input: say so, do not 500
        raise bad_request(f"The {param} could not be tokenized.", param=param, code="invalid_value") from None
    if not ids:  # an empty prompt starts from end-of-text, as GPT-2 prompts unconditionally
        if not served.stop_token_ids:
            raise bad_request(f"The {param} is empty.", param=param, code="invalid_value")
        ids = served.stop_token_ids[:1]
    return ids


def resolve_max_tokens(prompt_len: int, requested: int | None, served: ServedModel, settings: ServeSettings,
                       param: str, max_param: str = "max_tokens") -> int:
    """How many tokens to generate: the request's ``max_tokens`` if it fits, the default otherwise; else 400."""
    ctx = served.block_size
    if prompt_len >= ctx:
        raise bad_request(f"This model's maximum context length is {ctx} tokens. However, your {param} is "
                          f"{prompt_len} tokens, leaving no room for a completion. Please shorten it.",
                          param=param, code="context_length_exceeded")
    room = ctx - prompt_len
    if requested is None:
        return min(settings.default_max_tokens, room)
    if requested > settings.max_tokens_limit:
        raise bad_request(f"'{max_param}' is too large: {requested}. This server generates at most "
                          f"{settings.max_tokens_limit} tokens per completion.", param=max_param, code="invalid_value")
    if requested > room:
        raise bad_request(f"This model's maximum context length is {ctx} tokens. However, you requested "
                          f"{prompt_len + requested} tokens ({prompt_len} in the {param}, {requested} in the "
                          f"completion). Please reduce the length of the {param} or completion.",
                          param=param, code="context_length_exceeded")
    return requested


def build_completion_prompts(served: ServedModel, body: S.CompletionRequest,
                             settings: ServeSettings) -> list[tuple[list[int], int]]:
    """(token ids, max new tokens) for each prompt of a /v1/completions request."""
    if body.echo:
        raise _unsupported("echo", "the completion text never includes the prompt")
    if body.logprobs is not None:
        raise _unsupported("logprobs", "log probabilities are not returned")
    if body.suffix:
        raise _unsupported("suffix", "insertion is not available for decoder-only models")
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise _unsupported("best_of", "send 'n' instead")
    p = body.prompt
    if isinstance(p, str):
        prompts: list[str | list[int]] = [p]
    elif p and all(isinstance(x, int) for x in p):
        prompts = [list(p)]  # type: ignore[arg-type]  # one prompt as token ids
    else:
        prompts = list(p)  # type: ignore[arg-type]  # several texts, or several token-id lists
    if not prompts:
        raise bad_request("'prompt' must not be an empty list.", param="prompt", code="invalid_value")
    if len(prompts) > MAX_PROMPTS:
        raise bad_request(f"'prompt' holds {len(prompts)} prompts; at most {MAX_PROMPTS} are accepted.",
                          param="prompt", code="invalid_value")
    _check_common(body, settings, len(prompts) * (body.n or 1))
    _check_chars(sum(len(x) for x in prompts if isinstance(x, str)), served, "prompt")
    out = []
    for x in prompts:
        if isinstance(x, str):
            ids = _encode(served, x, "prompt")
        else:
            if not x:
                raise bad_request("A token-id prompt must not be empty.", param="prompt", code="invalid_value")
            bad = next((t for t in x if t >= served.vocab_size), None)
            if bad is not None:
                raise bad_request(f"Token id {bad} in 'prompt' is out of range: the vocabulary has "
                                  f"{served.vocab_size} tokens.", param="prompt", code="invalid_value")
            ids = list(x)
        out.append((ids, resolve_max_tokens(len(ids), body.max_tokens, served, settings, "prompt")))
    return out


def _message_text(i: int, message: S.ChatMessage, served: ServedModel) -> str:
    content = message.content
    if content is None:
        if message.role == "assistant":
            return ""
        raise bad_request(f"messages[{i}].content is required for role '{message.role}'.",
                          param=f"messages[{i}].content", code="missing_required_parameter")
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        param = f"messages[{i}].content[{j}]"
        if isinstance(part, S.TextPart):
            texts.append(part.text)
            continue
        kind = "image" if isinstance(part, S.ImagePart) else "audio"
        if kind not in served.modalities:
            raise bad_request(f"The model '{served.name}' takes text only; {param} is an {part.type} part. "
                              f"Send text, or serve a multimodal model.", param=param, code="unsupported_content")
        raise bad_request(f"{param}: {kind} input is not available in this version of the server.",
                          param=param, code="unsupported_content")
    return "\n".join(texts)


def _check_specials(served: ServedModel, messages: list[dict[str, Any]], param: str | None = None) -> None:
    """A message may not contain the tokenizer's special-token strings: parsed as markers, they would forge turns."""
    specials = getattr(served.tokenizer, "special_tokens", None) or {}
    for i, m in enumerate(messages):
        found = next((t for t in specials if t in m["content"]), None)
        if found is not None:
            where = param or f"messages[{i}].content"
            raise bad_request(f"{where} contains '{found}', a special token of this model's chat format; remove it.",
                              param=where, code="invalid_value")


def _check_chat_features(body: S.ChatCompletionRequest, settings: ServeSettings) -> None:
    if body.logprobs:
        raise _unsupported("logprobs", "log probabilities are not returned")
    if body.tools or body.functions:
        raise _unsupported("tools" if body.tools else "functions", "this model has no tool calling")
    if body.tool_choice not in (None, "none", "auto"):
        raise _unsupported("tool_choice", "this model has no tool calling")
    if body.response_format is not None and body.response_format.type != "text":
        raise _unsupported("response_format", "only {'type': 'text'} is available")
    _check_common(body, settings, body.n or 1)


def _requested_tokens(body: S.ChatCompletionRequest) -> tuple[int | None, str]:
    if body.max_completion_tokens is not None:
        return body.max_completion_tokens, "max_completion_tokens"
    return body.max_tokens, "max_tokens"


def build_chat_prompt(served: ServedModel, body: S.ChatCompletionRequest,
                      settings: ServeSettings) -> tuple[list[int], int]:
    """Render the messages through the chat template and tokenize; (token ids, max new tokens)."""
    _check_chat_features(body, settings)
    messages = [{"role": m.role, "content": _message_text(i, m, served)} for i, m in enumerate(body.messages)]
    _check_chars(sum(len(m["content"]) for m in messages), served, "messages")
    _check_specials(served, messages)
    try:
        text = served.chat_template.render(messages)
    except TemplateError as e:
        raise bad_request(str(e), param="messages", code="invalid_value") from None
    ids = _encode(served, text, "messages", special=True)
    bos = getattr(served.tokenizer, "bos_token_id", None)
    if getattr(served.tokenizer, "add_bos", False) and bos is not None and ids[:1] != [bos]:
        ids = [int(bos), *ids]  # a GGUF file's add_bos_token
    requested, max_param = _requested_tokens(body)
    return ids, resolve_max_tokens(len(ids), requested, served, settings, "messages", max_param)


# ------------------------------------------------------------------------------------------------------------
# Image / audio turns for a multimodal checkpoint

AUDIO_FORMATS = ("wav", "flac", "ogg")  # what libsndfile reads; mp3/webm would need a decoder this server lacks


def has_media(body: S.ChatCompletionRequest) -> bool:
    """Whether any message carries an image or audio part."""
    return any(isinstance(m.content, list) and any(not isinstance(p, S.TextPart) for p in m.content)
               for m in body.messages)


@dataclass
class MultimodalPrompt:
    """A multimodal checkpoint's prompt (its training format, placeholders for the media) and the media."""

    text: str
    images: list[Any]  # PIL images, in placeholder order
    audio: list[Any]  # (waveform, sample rate) pairs, in placeholder order
    max_new_tokens: int


def build_multimodal_prompt(served: ServedModel, body: S.ChatCompletionRequest,
                            settings: ServeSettings) -> MultimodalPrompt:
    """Messages with image/audio parts → the prompt a ``MultimodalGPT`` was trained on (``conversation_prompt``:
    "User: " / "\nAssistant: " turns; system messages dropped), each turn's placeholders first, then its text —
    for one user turn exactly the prompt ``generate.multimodal.answer`` builds."""
    from omnigpt.data.formats import conversation_prompt
    from omnigpt.serve.media import audio_from_bytes, b64_bytes, data_url_bytes, image_from_bytes
    from omnigpt.text.processors import AUDIO_TOKEN, IMAGE_TOKEN

    _check_chat_features(body, settings)
    if (body.n or 1) != 1:
        raise bad_request("Image/audio turns generate one choice; send n=1.", param="n", code="invalid_value")
    if body.top_p not in (None, 1.0) or body.repetition_penalty not in (None, 1.0):
        raise _unsupported("top_p" if body.top_p not in (None, 1.0) else "repetition_penalty",
                           "image/audio turns sample with temperature and top_k only")
    chat = hasattr(served.processor, "chat_prompt")  # a pretrained chat decoder: its own template
    turns: list[dict[str, str]] = []
    images: list[Any] = []
    audio: list[Any] = []
    system: list[str] = []
    for i, m in enumerate(body.messages):
        if m.role in ("system", "developer"):
            if chat:
                system.append(_message_text(i, m, served))
            continue
        if m.role not in ("user", "assistant"):
            raise bad_request(f"messages[{i}]: role '{m.role}' is not available for image/audio turns.",
                              param=f"messages[{i}].role", code="invalid_value")
        parts = [S.TextPart(type="text", text=m.content)] if isinstance(m.content, str) else list(m.content or [])
        marks, texts = [], []
        for j, part in enumerate(parts):
            param = f"messages[{i}].content[{j}]" if not isinstance(m.content, str) else f"messages[{i}].content"
            if isinstance(part, S.TextPart):
                if IMAGE_TOKEN in part.text or AUDIO_TOKEN in part.text:
                    raise bad_request(f"{param} contains a media placeholder; send images and audio as parts.",
                                      param=param, code="invalid_value")
                if chat:  # the template's markers are parsed in a chat prompt: user text may not forge them
                    _check_specials(served, [{"content": part.text}], param)
                texts.append(part.text)
                continue
            kind = "image" if isinstance(part, S.ImagePart) else "audio"
            if kind not in served.modalities:
                raise bad_request(f"The model '{served.name}' takes {', '.join(served.modalities)}; {param} is an "
                                  f"{part.type} part.", param=param, code="unsupported_content")
            if m.role != "user":
                raise bad_request(f"{param}: only user messages may carry {kind}.", param=param,
                                  code="unsupported_content")
            if isinstance(part, S.ImagePart):
                images.append(image_from_bytes(data_url_bytes(part.image_url.url, param), param))
                marks.append(IMAGE_TOKEN)
            else:
                fmt = part.input_audio.format
                if fmt not in AUDIO_FORMATS:
                    raise bad_request(f"{param}: audio format '{fmt[:16]}' is not supported; send "
                                      f"{', '.join(AUDIO_FORMATS)}.", param=param, code="invalid_audio_format")
                audio.append(audio_from_bytes(b64_bytes(part.input_audio.data, param), param,
                                              settings.max_audio_seconds))
                marks.append(AUDIO_TOKEN)
        value = "".join(marks) + ("\n" if marks else "") + "\n".join(texts)
        turns.append({"from": "human" if m.role == "user" else "gpt", "value": value})
    if not turns or turns[-1]["from"] != "human":
        raise bad_request("The last message must be a user message.", param="messages", code="invalid_value")
    _check_chars(sum(len(t["value"]) for t in turns) + sum(map(len, system)), served, "messages")
    if chat:
        _check_specials(served, [{"content": t} for t in system], "messages")
        text = served.processor.chat_prompt(turns, "\n".join(system) if system else None)
    else:
        text = conversation_prompt({"conversations": [*turns, {"from": "gpt", "value": ""}]})[0]
    try:
        n_tokens = len(served.processor.encode_sample(text, len(images), len(audio)))
    except ValueError as e:
        raise bad_request(f"The messages could not be tokenized: {str(e)[:200]}", param="messages",
                          code="invalid_value") from None
    requested, max_param = _requested_tokens(body)
    return MultimodalPrompt(text, images, audio,
                            resolve_max_tokens(n_tokens, requested, served, settings, "messages", max_param))
