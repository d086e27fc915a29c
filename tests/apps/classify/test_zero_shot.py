"""Zero-shot classification by a chat model (issue 23): the labels compete as the model's answer.

``label_probs`` is checked against the definition (the product of each form's conditional token probabilities,
each prefix run on its own, summed over a label's forms) on a tiny random GPT, with labels of several forms and
lengths that share first tokens (the KV-cached batch must equal one forward per prefix). The pipelines' shapes and
bad input use SmolLM2 (small, offline); the real default (Qwen2.5 0.5B) on Chinese and English reviews is the slow
test.
"""

from __future__ import annotations

import pytest
import torch

from omnigpt.config import GPTConfig
from omnigpt.generate.classify import label_probs
from omnigpt.hf.pipelines import pipeline
from omnigpt.models.gpt import GPT

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = [5, 17, 300, 42, 9]


def tiny() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_name("tiny-gpt2", initializer_range=0.3, wpe_initializer_range=0.3)).eval()


def by_definition(model: GPT, prompt: list[int], labels: list[list[list[int]]]) -> torch.Tensor:
    """p(label | prompt) ∝ Σ_forms ∏_j p(form_j | prompt, form_<j), each conditional from its own forward."""
    probs = []
    for forms in labels:
        total = 0.0
        for form in forms:
            p = 1.0
            for j, t in enumerate(form):
                ids = torch.tensor([prompt + form[:j]])
                p *= float(model(ids).logits[0, -1].double().softmax(-1)[t])
            total += p
        probs.append(total)
    probs = torch.tensor(probs)
    return (probs / probs.sum()).float()


@torch.no_grad()
def test_label_probs_is_the_product_of_token_probabilities():
    model = tiny()
    labels = [[[7, 8, 9], [40]], [[7, 20]], [[30], [31, 7]]]  # forms of 1-3 tokens, first tokens shared
    torch.testing.assert_close(label_probs(model, PROMPT, labels), by_definition(model, PROMPT, labels),
                               rtol=1e-4, atol=1e-6)
    single = [[[7]], [[20]], [[30]]]  # one token each: the prompt's forward alone
    torch.testing.assert_close(label_probs(model, PROMPT, single), by_definition(model, PROMPT, single),
                               rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="non-empty token sequence"):
        label_probs(model, PROMPT, [[[7]], [[]]])


def test_pipelines_shapes_and_bad_input():
    clf = pipeline("sentiment-analysis", model="smollm2-135m-instruct")
    out = clf(["I love it.", "I hate it."], top_k=None)
    assert [sorted(x["label"] for x in row) for row in out] == [["negative", "positive"]] * 2
    assert all(abs(sum(x["score"] for x in row) - 1) < 1e-5 for row in out)
    topic = pipeline("text-classification", model="smollm2-135m-instruct", labels=["sport", "politics", "tech"])
    assert topic("The match ended 2-1.")[0]["label"] in {"sport", "politics", "tech"}
    zs = pipeline("zero-shot-classification", model="smollm2-135m-instruct")
    one = zs("The team won the final.", candidate_labels="sport, politics")
    assert one["sequence"] == "The team won the final." and sorted(one["labels"]) == ["politics", "sport"]
    assert one["scores"] == sorted(one["scores"], reverse=True) and abs(sum(one["scores"]) - 1) < 1e-5
    with pytest.raises(ValueError, match="candidate_labels"):
        zs("text")
    with pytest.raises(ValueError, match="two or more different"):
        zs("text", candidate_labels=["sport", "sport"])
    with pytest.raises(ValueError, match="multi_label"):
        zs("text", candidate_labels=["a", "b"], multi_label=True)
    with pytest.raises(ValueError, match="input 1: empty text"):
        clf(["fine", "  "])


@pytest.mark.slow
def test_default_model_reads_chinese_and_english_reviews():
    clf = pipeline("sentiment-analysis")  # no model: Qwen2.5 0.5B, zero-shot
    texts = ["这个手机很好用，电池也很耐用。", "质量太差了，用了两天就坏了。",
             "The food was delicious and the staff were kind.", "Worst hotel ever: dirty room and rude staff."]
    assert [r["label"] for r in clf(texts)] == ["positive", "negative", "positive", "negative"]
    zs = pipeline("zero-shot-classification")
    assert zs("The central bank raised interest rates again.",
              candidate_labels=["business", "sport", "entertainment"])["labels"][0] == "business"
