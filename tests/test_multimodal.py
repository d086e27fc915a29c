"""Multimodal models: encoders, placeholder fusion, answer-only loss, KV-cache conditioning, overfitting one
batch, save→load, and CLIP-style contrastive alignment checked against brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from multimodal_helpers import ByteTokenizer
from PIL import Image

from omnigpt.checkpoints.pretrained import load_pretrained, save_pretrained
from omnigpt.models.audio import AudioConfig, AudioEncoder, sinusoids
from omnigpt.models.contrastive import (
    ContrastiveConfig,
    ContrastiveModel,
    clip_loss,
    recall_at_k,
    zero_shot_classifier,
    zero_shot_predict,
)
from omnigpt.models.gpt import causal_lm_loss
from omnigpt.models.kv_cache import make_kv_cache
from omnigpt.models.multimodal import (
    MultimodalConfig,
    MultimodalGPT,
    Projector,
    ProjectorConfig,
    scatter_placeholders,
)
from omnigpt.models.vision import VisionConfig, ViT
from omnigpt.text.processors import Processor, ProcessorConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model_and_processor(**overrides) -> tuple[MultimodalGPT, Processor]:
    tok = ByteTokenizer()
    proc = Processor(tok, ProcessorConfig())
    cfg = MultimodalConfig.from_name("tiny-omni", image_token_id=proc.image_token_id,
                                     audio_token_id=proc.audio_token_id, **overrides)
    assert len(tok) <= cfg.text.vocab_size
    return MultimodalGPT(cfg), Processor(tok, ProcessorConfig(**cfg.processor_kwargs()))


def sample_media(n_images: int, n_clips: int, seed: int = 0) -> tuple[list[Image.Image], list[tuple]]:
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)) for _ in range(n_images)]
    t = np.arange(8000) / 16000
    clips = [((0.3 * np.sin(2 * np.pi * (200 + 150 * k) * t)).astype(np.float32), 16000) for k in range(n_clips)]
    return images, clips


# ------------------------------------------------------------------------------------------------------------
# Encoders


def test_vit_shapes_and_bidirectional_attention():
    vit = ViT(VisionConfig.from_name("tiny-vit")).eval()
    x = torch.randn(2, 3, 16, 16)
    out = vit(x)
    assert out.last_hidden_state.shape == (2, 16, 32) and out.pooler_output.shape == (2, 32)
    x2 = x.clone()
    x2[:, :, -4:, -4:] += 1.0  # change only the last patch
    out2 = vit(x2)
    assert not torch.allclose(out.last_hidden_state[:, 0], out2.last_hidden_state[:, 0])  # the first patch sees it
    with pytest.raises(ValueError, match="pixel_values must have shape"):
        vit(torch.randn(2, 3, 17, 16))


def test_audio_encoder_conv_stem_and_sinusoids():
    enc = AudioEncoder(AudioConfig.from_name("tiny-audio")).eval()
    for frames in (64, 63, 10):
        assert enc(torch.randn(1, 80, frames)).last_hidden_state.shape == (1, (frames + 1) // 2, 32)
    with pytest.raises(ValueError, match="more than n_ctx 64"):
        enc(torch.randn(1, 80, 130))
    # Whisper's table: sin(t / 10000^(i / (C/2 - 1))) then cos(...), channels side by side.
    pe = sinusoids(5, 8)
    i = torch.arange(4)
    ref_t = torch.arange(5)[:, None] / (10000 ** (i / 3))[None]
    torch.testing.assert_close(pe, torch.cat([ref_t.sin(), ref_t.cos()], dim=1))


def test_projector_merges_neighbours():
    proj = Projector(4, 6, ProjectorConfig("linear", merge=2))
    x = torch.randn(3, 8, 4)
    y = proj(x)
    assert y.shape == (3, 4, 6)
    lin = proj.net[0]
    torch.testing.assert_close(y[:, 1], lin(torch.cat([x[:, 2], x[:, 3]], dim=-1)))
    assert isinstance(Projector(4, 6, ProjectorConfig("mlp")).net[1], torch.nn.GELU)


# ------------------------------------------------------------------------------------------------------------
# Fusion


def test_fusion_writes_exactly_the_placeholder_positions():
    P = 7
    ids = torch.tensor([[1, P, P, 2, P, P, 3, 4],  # sample 0: two images of 2 tokens, interleaved with text
                        [P, P, 5, 6, 0, 0, 0, 0]])  # sample 1: one image, then padding
    embeds = torch.randn(2, 8, 5)
    feats = torch.arange(3 * 2 * 5, dtype=torch.float32).view(3, 2, 5)  # 3 images × 2 tokens
    out = scatter_placeholders(embeds, ids, P, feats, "image")
    is_p = ids == P
    assert torch.equal(out[~is_p], embeds[~is_p])  # everything else untouched, bit for bit
    assert torch.equal(out[0, 1:3], feats[0]) and torch.equal(out[0, 4:6], feats[1])
    assert torch.equal(out[1, 0:2], feats[2])


def test_placeholder_count_mismatch_raises():
    P = 7
    ids = torch.tensor([[1, P, P, P, 2]])
    with pytest.raises(ValueError, match=r"3 image placeholder tokens.*1 image inputs × 2 tokens each = 2"):
        scatter_placeholders(torch.zeros(1, 5, 4), ids, P, torch.zeros(1, 2, 4), "image")
    with pytest.raises(ValueError, match="no image inputs were given"):
        scatter_placeholders(torch.zeros(1, 5, 4), ids, P, None, "image")
    two = torch.tensor([[P, P, P, 0], [P, 0, 0, 0]])  # 4 in total = 2 × 2, but sample 0 holds 1.5 images
    with pytest.raises(ValueError, match=r"per sample \[3, 1\]"):
        scatter_placeholders(torch.zeros(2, 4, 4), two, P, torch.zeros(2, 2, 4), "image")

    model, proc = tiny_model_and_processor()
    images, clips = sample_media(2, 1)
    batch = proc("<|image|> and <|audio|>", images=images[:1], audio=clips)
    with pytest.raises(ValueError, match="2 image inputs"):
        model(batch["input_ids"], pixel_values=proc(["<|image|>", "<|image|>"], images=[[i] for i in images])[
            "pixel_values"], input_features=batch["input_features"])
    with pytest.raises(ValueError, match="audio placeholder tokens .* but no audio inputs"):
        model(batch["input_ids"], pixel_values=batch["pixel_values"])


def test_model_embed_uses_encoders_at_placeholders_and_wte_elsewhere():
    model, proc = tiny_model_and_processor()
    model.eval()
    images, clips = sample_media(2, 2)
    batch = proc(["<|image|> hi <|audio|><|image|>", "x<|audio|>"], images=[images, []], audio=[clips[:1], clips[1:]])
    with torch.no_grad():
        emb = model.embed(batch["input_ids"], batch["pixel_values"], batch["input_features"])
        wte = model.language_model.transformer.wte(batch["input_ids"])
        img, aud = model.encode_images(batch["pixel_values"]), model.encode_audio(batch["input_features"])
    is_img = batch["input_ids"] == proc.image_token_id
    is_aud = batch["input_ids"] == proc.audio_token_id
    assert torch.equal(emb[~(is_img | is_aud)], wte[~(is_img | is_aud)])
    torch.testing.assert_close(emb[is_img], img.reshape(-1, img.shape[-1]), rtol=0, atol=0)
    torch.testing.assert_close(emb[is_aud], aud.reshape(-1, aud.shape[-1]), rtol=0, atol=0)


def test_loss_is_only_on_answer_tokens():
    model, proc = tiny_model_and_processor()
    images, clips = sample_media(1, 1)
    batch = proc(["look <|image|> listen <|audio|> answer:", "plain question:"], images=[images, []],
                 audio=[clips, []], answers=["a cat", "no"])
    out = model(**batch)
    labels = batch["labels"]
    n_answer = int((labels != -100).sum())
    assert n_answer == len("a cat") + 1 + len("no") + 1  # the answers and their eos, nothing else
    torch.testing.assert_close(out.loss, causal_lm_loss(out.logits, labels))
    # Labels on placeholders are dropped even if a caller sets them.
    bad = batch["input_ids"].clone().masked_fill(batch["attention_mask"] == 0, -100)
    out2 = model(**{**batch, "labels": bad})
    keep = bad.masked_fill((bad == proc.image_token_id) | (bad == proc.audio_token_id), -100)
    torch.testing.assert_close(out2.loss, causal_lm_loss(out2.logits, keep))


def test_kv_cache_decode_matches_full_forward_with_media():
    model, proc = tiny_model_and_processor()
    model.eval()
    images, clips = sample_media(1, 1)
    batch = proc("<|image|> then <|audio|> says", images=images, audio=clips)
    ids = batch["input_ids"]
    nxt = torch.tensor([[65, 66, 67]])
    with torch.no_grad():
        full = model(torch.cat([ids, nxt], 1), pixel_values=batch["pixel_values"],
                     input_features=batch["input_features"]).logits
        cache = make_kv_cache(model.config.text)
        step = model(ids, pixel_values=batch["pixel_values"], input_features=batch["input_features"],
                     past_key_values=cache).logits
        torch.testing.assert_close(step, full[:, : ids.shape[1]], atol=1e-5, rtol=1e-5)
        for k in range(3):  # decode: plain tokens, the media live in the cache
            step = model(nxt[:, k : k + 1], past_key_values=cache).logits
            torch.testing.assert_close(step[:, 0], full[:, ids.shape[1] + k], atol=1e-5, rtol=1e-5)


def test_left_padded_batch_matches_single_samples():
    model, proc = tiny_model_and_processor()
    model.eval()
    images, _ = sample_media(2, 0)
    texts = ["<|image|> short", "a much longer prompt <|image|> here"]
    batch = proc(texts, images=[[images[0]], [images[1]]], padding_side="left")
    with torch.no_grad():
        out = model(**batch).logits[:, -1]
        for i in range(2):
            one = proc(texts[i], images=[images[i]])
            torch.testing.assert_close(out[i], model(**one).logits[0, -1], atol=1e-5, rtol=1e-5)


def test_tiny_multimodal_model_overfits_one_batch():
    torch.manual_seed(0)
    model, proc = tiny_model_and_processor()
    images, clips = sample_media(3, 2, seed=1)
    batch = proc(["what is <|image|>?", "hear <|audio|> and see <|image|>", "<|audio|><|image|> both"],
                 images=[[images[0]], [images[1]], [images[2]]], audio=[[], [clips[0]], [clips[1]]],
                 answers=["red square", "a low hum", "tone and noise"])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = model(**batch).loss
        first = first if first is not None else loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert first > 4.0  # starts near ln(vocab) = ln(512) ≈ 6.2: GPT-2 init everywhere
    assert loss.item() < 0.05, loss.item()
    # Every part learned: the encoders and projectors received gradient.
    for name in ("vision_encoder", "vision_projector", "audio_encoder", "audio_projector"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, name).parameters()), name


def test_save_load_gives_identical_outputs(tmp_path):
    model, proc = tiny_model_and_processor()
    model.eval()
    images, clips = sample_media(1, 1)
    batch = proc("<|image|> and <|audio|>", images=images, audio=clips, answers="ok")
    save_pretrained(model, tmp_path / "ckpt", proc)
    for name in ("config.json", "model.safetensors", "processor_config.json", "COMPLETE"):
        assert (tmp_path / "ckpt" / name).is_file()
    again = load_pretrained(tmp_path / "ckpt")
    assert again.config == model.config
    assert again.language_model.lm_head.weight is again.language_model.transformer.wte.weight  # still tied
    with torch.no_grad():
        a, b = model(**batch), again(**batch)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.loss, b.loss)
    p2 = Processor.from_pretrained(tmp_path / "ckpt", ByteTokenizer())
    assert p2.config == proc.config
    # A flipped byte is caught by the manifest, not loaded as a silently different model.
    path = tmp_path / "ckpt" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="model.safetensors"):
        load_pretrained(tmp_path / "ckpt")


def test_parameter_groups_partition_the_model():
    model, _ = tiny_model_and_processor()
    groups = model.parameter_groups()
    assert set(groups) == {"language_model", "vision_encoder", "vision_projector", "audio_encoder", "audio_projector"}
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}


def test_config_validation_and_round_trip():
    cfg = MultimodalConfig.from_name("tiny-omni", image_token_id=300, audio_token_id=301)
    assert MultimodalConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="outside the decoder's vocabulary"):
        cfg.replace(image_token_id=10_000)
    with pytest.raises(ValueError, match="divisible by merge"):
        cfg.replace(audio_projector=ProjectorConfig("mlp", merge=3))


# ------------------------------------------------------------------------------------------------------------
# Contrastive alignment


def brute_force_clip_loss(a: torch.Tensor, b: torch.Tensor, scale: float, groups: list[int] | None = None) -> float:
    """CLIP's loss with plain Python loops: mean over both directions of -Σ_j target_ij · log softmax_j."""
    n = a.shape[0]
    sim = [[scale * float(a[i] @ b[j]) for j in range(n)] for i in range(n)]
    groups = groups or list(range(n))

    def direction(s: list[list[float]]) -> float:
        total = 0.0
        for i in range(n):
            lse = math.log(sum(math.exp(v) for v in s[i]))
            pos = [j for j in range(n) if groups[j] == groups[i]]
            total += -sum((s[i][j] - lse) / len(pos) for j in pos)
        return total / n

    return (direction(sim) + direction([list(r) for r in zip(*sim, strict=True)])) / 2


def test_clip_loss_matches_brute_force():
    a = F.normalize(torch.randn(6, 5, dtype=torch.float64), dim=-1)
    b = F.normalize(torch.randn(6, 5, dtype=torch.float64), dim=-1)
    assert math.isclose(float(clip_loss(a, b, 14.3)), brute_force_clip_loss(a, b, 14.3), rel_tol=1e-10)
    groups = [0, 1, 0, 2, 1, 0]
    got = float(clip_loss(a, b, 14.3, torch.tensor(groups)))
    assert math.isclose(got, brute_force_clip_loss(a, b, 14.3, groups), rel_tol=1e-10)


def test_temperature_is_learnable_and_clamped():
    model = ContrastiveModel(ContrastiveConfig.from_name("tiny-clip"))
    assert math.isclose(model.scale().item(), 1 / 0.07, rel_tol=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))
    assert math.isclose(model.scale().item(), 100.0, rel_tol=1e-5)
    out = model(pixel_values=torch.randn(4, 3, 16, 16), input_ids=torch.randint(0, 512, (4, 6)))
    out.loss.backward()
    assert float(model.logit_scale.grad) == 0.0  # beyond the clamp: no push further up
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
    model.zero_grad()
    model(pixel_values=torch.randn(4, 3, 16, 16), input_ids=torch.randint(0, 512, (4, 6))).loss.backward()
    assert float(model.logit_scale.grad) != 0.0


def test_recall_at_k_matches_brute_force():
    q, g = torch.randn(20, 8), torch.randn(30, 8)
    targets = torch.randint(0, 30, (20,))
    got = recall_at_k(q, g, ks=(1, 5, 10), targets=targets)
    sims = F.normalize(q, dim=-1) @ F.normalize(g, dim=-1).T
    for k in (1, 5, 10):
        hits = sum(int(targets[i]) in sims[i].topk(k).indices.tolist() for i in range(20))
        assert got[k] == pytest.approx(hits / 20)
    assert recall_at_k(g, g, ks=(1,))[1] == 1.0


def test_zero_shot_classifier_with_prompt_templates():
    # A fake text encoder: each class name hashes to a direction; the templates add small template noise.
    dirs = {"cat": torch.tensor([1.0, 0, 0]), "dog": torch.tensor([0, 1.0, 0]), "car": torch.tensor([0, 0, 1.0])}

    def encode_text(texts: list[str]) -> torch.Tensor:
        return torch.stack([dirs[t.split()[-1].strip(".")] + 0.1 * len(t) / 20 for t in texts])

    templates = ("a photo of a {}.", "a blurry picture of a {}.")
    W = zero_shot_classifier(encode_text, ["cat", "dog", "car"], templates)
    assert W.shape == (3, 3) and torch.allclose(W.norm(dim=-1), torch.ones(3))
    ref = F.normalize(F.normalize(encode_text([t.format("dog") for t in templates]), dim=-1).mean(0), dim=-1)
    torch.testing.assert_close(W[1], ref)
    images = F.normalize(torch.tensor([[0.1, 0.9, 0.0], [0.0, 0.2, 1.0], [2.0, 0.1, 0.1]]), dim=-1)
    assert zero_shot_predict(images, W).tolist() == [1, 2, 0]


@pytest.mark.parametrize("preset", ["tiny-clip", "tiny-clap"])
def test_contrastive_model_aligns_pairs_and_round_trips(tmp_path, preset):
    torch.manual_seed(0)
    model = ContrastiveModel(ContrastiveConfig.from_name(preset))
    n = 8
    media = (torch.randn(n, 3, 16, 16) if preset == "tiny-clip" else torch.randn(n, 80, 64))
    key = "pixel_values" if preset == "tiny-clip" else "input_features"
    ids = torch.randint(0, 512, (n, 5))
    mask = torch.ones(n, 5, dtype=torch.long)
    mask[0, 3:] = 0  # a right-padded caption: pooled at its last real token
    batch = {key: media, "input_ids": ids, "attention_mask": mask}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    out = model(**batch)
    assert out.loss.item() < 0.1
    assert recall_at_k(out.embeds_a, out.embeds_b, ks=(1,))[1] == 1.0
    save_pretrained(model, tmp_path / preset)
    again = load_pretrained(tmp_path / preset)
    assert torch.equal(again(**batch).logits, out.logits)
