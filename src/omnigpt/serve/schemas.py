"""Request and response bodies of the OpenAI-compatible API (the subset omnigpt serves), as pydantic models.

Field names, defaults and ranges follow OpenAI's API reference for ``/v1/completions``, ``/v1/chat/completions``
and ``/v1/models``. Two deliberate differences from a permissive server:

* Models validate **strictly** (``"5"`` is not an integer, ``1.5`` is not a bool) and every string is checked for
  lone surrogates (``"\\ud800"`` parses as JSON but cannot be encoded, and crashes tokenizers downstream). Both fail
  as a 400 naming the parameter.
* Unknown fields are ignored (clients add new ones all the time); known features this server does not implement
  (tools, logprobs, logit_bias, ...) are rejected with a 400 by the route rather than silently dropped.

``top_k``, ``repetition_penalty`` and ``ignore_eos`` are extensions (as in vLLM) that map straight onto
``generate()``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

MAX_N = 8  # choices per request: each is one row of the batch
MAX_STOP = 4  # OpenAI allows up to 4 stop sequences


def _encodable(s: str) -> str:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("string contains a lone surrogate (invalid Unicode)") from None
    return s


Text = Annotated[str, AfterValidator(_encodable)]
StopSeq = Annotated[Text, Field(min_length=1, max_length=256)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


# ------------------------------------------------------------------------------------------------------------
# Requests


class StreamOptions(_Strict):
    include_usage: bool | None = None


class _Sampling(_Strict):
    """Parameters shared by completions and chat completions."""

    model: Text = Field(max_length=256)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    repetition_penalty: float | None = Field(default=None, ge=0.01, le=10.0)
    ignore_eos: bool | None = None  # keep going past end-of-text (benchmarks: fixed-length outputs)
    n: int | None = Field(default=None, ge=1, le=MAX_N)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: StopSeq | list[StopSeq] | None = Field(default=None)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: Text | None = Field(default=None, max_length=512)

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: a prompt (text, texts, token ids, or lists of token ids) to continue."""

    prompt: Text | list[Text] | list[Annotated[int, Field(ge=0)]] | list[list[Annotated[int, Field(ge=0)]]]
    echo: bool | None = None
    logprobs: int | None = Field(default=None, ge=0, le=5)
    suffix: Text | None = None
    best_of: int | None = Field(default=None, ge=1, le=MAX_N)


class ImageURL(_Strict):
    url: Text
    detail: Literal["auto", "low", "high"] | None = None


class InputAudio(_Strict):
    data: Text
    format: Literal["wav", "mp3", "flac", "ogg", "webm"] | Text


class TextPart(_Strict):
    type: Literal["text"]
    text: Text


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class AudioPart(_Strict):
    type: Literal["input_audio"]
    input_audio: InputAudio


ContentPart = Annotated[TextPart | ImagePart | AudioPart, Field(discriminator="type")]


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[ContentPart] | None = None
    name: Text | None = Field(default=None, max_length=256)


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``: messages rendered through the model's chat template."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    functions: list[dict[str, Any]] | None = None
    response_format: ResponseFormat | None = None


class EmbeddingRequest(_Strict):
    """``POST /v1/embeddings``: one text or a list of texts (token-id inputs are refused by the route)."""

    model: Text = Field(max_length=256)
    input: Text | list[Text] | list[Annotated[int, Field(ge=0)]] | list[list[Annotated[int, Field(ge=0)]]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)
    user: Text | None = Field(default=None, max_length=512)


# ------------------------------------------------------------------------------------------------------------
# Responses


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length"]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason | None
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason | None
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "omnigpt"
    # Extensions the web page reads: context length and accepted input modalities.
    context_length: int | None = None
    modalities: list[str] = Field(default_factory=lambda: ["text"])


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # floats, or base64 of little-endian float32 (encoding_format="base64")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class TranscriptionUsage(BaseModel):
    type: Literal["duration"] = "duration"
    seconds: int


class Transcription(BaseModel):
    """``response_format=json``."""

    text: str
    usage: TranscriptionUsage | None = None


class TranscriptionSegment(BaseModel):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float = 0.0
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class TranscriptionVerbose(BaseModel):
    """``response_format=verbose_json`` (``language`` is the code Whisper detected or was given, e.g. "en")."""

    task: Literal["transcribe"] = "transcribe"
    language: str
    duration: float
    text: str
    segments: list[TranscriptionSegment]
    usage: TranscriptionUsage | None = None


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str  # the default chat model
    models: list[str] = Field(default_factory=list)  # every model this server answers for
    queued: int
    running: int
    requests_total: int
    cancelled_total: int
    rejected_total: int
    batches_total: int  # batches run on the model; rows / batches is the mean batch size
    batched_rows_total: int
