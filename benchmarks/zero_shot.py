"""A chat model zero-shot on the language applications' test items, beside the baselines measured in the same run
(issue 23): the rows the trained models are compared with in docs/language-apps.md.

    python benchmarks/zero_shot.py                                   # Qwen2.5 0.5B, every set
    python benchmarks/zero_shot.py --only sentiment,topic --limit 200  # the first 200 test items of those sets
    python benchmarks/zero_shot.py --model smollm2-135m-instruct

Classification (sentiment-zh, topic-bbc): the pipeline's zero-shot scoring (the labels compete as the model's
answer), on the first ``--limit`` test items — the items ``classification_baselines(name, "test", limit)`` and
``omnigpt eval --limit`` score. Summarization and translation: the pipeline's chat prompt with the dataset's
instruction and the trained recipe's source and output budgets, greedy, on ``--limit`` test pairs spread over the
split (``omnigpt eval``'s choice). Rows go to ``runs/apps/zero_shot.jsonl``, a Markdown table to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from omnigpt.apps import load_recipe  # noqa: E402
from omnigpt.apps.classify.pipeline import zero_shot_card  # noqa: E402
from omnigpt.apps.common import baselines, metrics  # noqa: E402
from omnigpt.apps.common.pipeline import MULTILINGUAL_CHAT_MODEL  # noqa: E402
from omnigpt.apps.seq2seq.task import INSTRUCTIONS, generate_outputs, pick, score  # noqa: E402
from omnigpt.checkpoints.registry import load  # noqa: E402
from omnigpt.data.textsets import load_classification, load_pairs, split_items  # noqa: E402
from omnigpt.generate.classify import ask_labels  # noqa: E402
from omnigpt.kernels.precision import describe_machine  # noqa: E402

CLASSIFICATION = ("sentiment-zh", "topic-bbc")  # asked with seq2seq's INSTRUCTIONS["<set>-answer"]
SEQ2SEQ = {"summarize-bbc": "configs/tasks/summarize-bbc.yaml", "summarize-wiki": "configs/tasks/summarize-wiki.yaml",
           "translate-en-es": "configs/tasks/translate-en-es-smollm2.yaml"}


def classify(loaded, name: str, limit: int) -> dict:
    labels, items = load_classification(name)
    test = split_items(items, "test")[:limit]
    card = zero_shot_card(labels, INSTRUCTIONS[f"{name}-answer"])  # what a model fine-tuned to answer is asked
    t0 = time.perf_counter()
    probs = ask_labels(loaded.model, loaded.preprocessor, loaded.template, card, [x.text for x in test])  # (N, K)
    preds = [labels[int(i)] for i in probs.argmax(-1)]
    seconds = time.perf_counter() - t0
    scores = metrics.classification_scores(preds, [x.label for x in test], labels)
    return {"dataset": name, "items": len(test), **scores, "seconds": round(seconds, 1),
            "baselines": baselines.classification_baselines(name, "test", limit)}


def seq2seq(loaded, name: str, limit: int) -> dict:
    d = load_recipe(ROOT / SEQ2SEQ[name]).data
    card = {"format": "chat", "instruction": INSTRUCTIONS[name], "max_source_tokens": d.max_source_tokens,
            "max_new_tokens": d.max_new_tokens}
    pairs = pick(split_items(load_pairs(name), "test"), limit)
    sources, refs = [p.source for p in pairs], [p.target for p in pairs]
    t0 = time.perf_counter()
    outputs = generate_outputs(loaded.model, loaded.preprocessor, card, sources, loaded.template)
    seconds = time.perf_counter() - t0
    return {"dataset": name, "items": len(pairs), **score(name, outputs, refs), "seconds": round(seconds, 1),
            "baselines": baselines.pair_baselines(name, pairs=pairs),
            "samples": [{"source": s[:200], "reference": r, "output": o} for s, r, o in
                        zip(sources[:3], refs, outputs, strict=False)]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=MULTILINGUAL_CHAT_MODEL)
    p.add_argument("--only", default="", help="comma-separated: sets whose name contains one of these")
    p.add_argument("--limit", type=int, default=200, help="test items per set")
    p.add_argument("--out", default="runs/apps/zero_shot.jsonl")
    args = p.parse_args()
    print(describe_machine(), flush=True)
    loaded = load(args.model)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print("| set | items | metric | zero-shot | baselines (same items) | seconds |\n|---|---|---|---|---|---|")
    for name in [*CLASSIFICATION, *SEQ2SEQ]:
        if not any(part in name for part in args.only.split(",")):
            continue
        row = classify(loaded, name, args.limit) if name in CLASSIFICATION else seq2seq(loaded, name, args.limit)
        row["model"] = args.model
        with out.open("a") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        key = {"sentiment-zh": "accuracy", "topic-bbc": "accuracy", "translate-en-es": "bleu_sacrebleu"}.get(
            name, "rougeL")
        base = ", ".join(f"{k} {v.get(key, float('nan')):.3g}" for k, v in row["baselines"].items())
        print(f"| {name} | {row['items']} | {key} | {row[key]:.3g} | {base} | {row['seconds']} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
