"""``omnigpt eval CHECKPOINT``: a checkpoint's metrics, by the kind of model in its ``config.json``.

CHECKPOINT is a checkpoint directory (omnigpt's or an imported Hugging Face GPT-2) or a run directory (its newest
checkpoint is used).

* Text models: full-pass loss, perplexity and bits per byte (``omnigpt.train.evaluate``). The data is ``--data DIR``
  (prepared shards), ``--text FILE ...`` (raw text, tokenized with the checkpoint's tokenizer), or, for omnigpt
  checkpoints, the data directory of the recipe that trained it.
* Application runs (``classify``, ``seq2seq``, ``image-classify``, ``igpt``, ... — every task whose class overrides
  ``Task.evaluate_run``): the task's metrics on its held-out test split under their usual names (``accuracy``,
  ``macro_f1``, ``rougeL``, ``bleu_sacrebleu``, ...), the baselines measured in the same call under ``baselines``, and
  pictures or sample tables, all written into the run directory (``--out DIR`` to choose) with ``eval.json``.
* Multimodal / contrastive models (``omnigpt.apps``): generated answers scored by exact match, BLEU and
  WER, or zero-shot accuracy and recall@k, on ``--data DIR`` (a prepared multimodal directory, ``--split``
  default test) or the recipe's ``data.eval`` sources. One JSON line is printed and written to ``eval.json`` in
  the run directory (``--out`` to choose).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from omnigpt.checkpoints.state import saved_recipe


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint directory, or a run directory (uses its newest checkpoint)")
    p.add_argument("--data", help="prepared data directory (default: the one the checkpoint was trained on)")
    p.add_argument("--text", nargs="+", help="raw text files to evaluate instead of prepared data")
    p.add_argument("--split", help="text: val (default) or train; multimodal: the split file read (default test)")
    p.add_argument("--limit", type=int, help="multimodal / applications: at most this many evaluation items")
    p.add_argument("--out", help="where to write eval.json (multimodal: the file; applications: a directory; "
                   "default: the run directory)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--block-size", type=int, help="context per window (default: the model's)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                   help="autocast dtype for text models (auto: bf16 where the CPU computes it natively, else fp32)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from omnigpt.checkpoints.state import load_model, resolve_checkpoint
    from omnigpt.data.shards import TokenData
    from omnigpt.files.atomic import verify_manifest
    from omnigpt.kernels.precision import resolve_dtype
    from omnigpt.train.evaluate import evaluate, evaluate_texts

    ckpt = resolve_checkpoint(args.checkpoint)
    verify_manifest(ckpt)
    config = json.loads((ckpt / "config.json").read_text()) if (ckpt / "config.json").is_file() else {}
    task = application_task(ckpt)
    if task is not None:
        return run_application(args, ckpt, task)
    if config.get("model_type") in ("omnigpt-multimodal", "omnigpt-contrastive"):
        return run_multimodal(args, ckpt)
    split = args.split or "val"
    if split not in ("val", "train"):
        raise ValueError(f"--split {split}: text data has the splits val and train")
    model = load_model(ckpt)
    dtype = resolve_dtype(args.dtype).autocast
    if args.text:
        from omnigpt.text.tokenizer import load_tokenizer

        texts = [Path(t).read_text(encoding="utf-8") for t in args.text]
        result = evaluate_texts(model, load_tokenizer(ckpt), texts, args.batch_size, args.block_size, dtype, True)
        source = f"{len(texts)} text file(s)"
    else:
        data_dir = args.data
        if data_dir is None:
            data_dir = saved_recipe(ckpt).get("data", {}).get("dir")
        if data_dir is None:
            raise ValueError(f"{ckpt} has no trainer state naming its data: pass --data DIR or --text FILE")
        data = TokenData(data_dir, verify=True)
        result = evaluate(model, data, split, args.batch_size, args.block_size, dtype=dtype, progress=True)
        source = f"{data_dir} [{split}]"
    training = training_status(ckpt)
    if args.json:
        print(json.dumps({"checkpoint": str(ckpt), "data": source, **result.as_dict(), **training}))
    else:
        bpb = f"{result.bits_per_byte:.4f}" if result.bits_per_byte is not None else "n/a"
        print(f"{ckpt} on {source}: loss {result.loss:.4f}, perplexity {result.perplexity:.2f}, "
              f"bits/byte {bpb} ({result.tokens:,} tokens, {result.windows:,} windows, full pass)")
    return 0


def training_status(ckpt: Path) -> dict[str, Any]:
    """``{"training": run.json}`` of the run that wrote ``ckpt`` (empty when it has none), and a loud line on stderr
    when that run stopped before its planned steps: its numbers are those of an unfinished run."""
    from omnigpt.train.report import run_status

    status = run_status(run_dir_of(ckpt))
    if status is None:
        return {}
    if status.get("stopped_early"):
        print(f"WARNING: {run_dir_of(ckpt)} stopped early ({status['stopped_early']}) at step "
              f"{status['steps_done']} of {status['steps_planned']}: these are an unfinished run's numbers",
              file=sys.stderr)
    return {"training": status}


def run_dir_of(ckpt: Path) -> Path:
    """runs/NAME/checkpoints/step_N → runs/NAME; a bare model directory is its own run directory."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt


def application_task(ckpt: Path) -> type | None:
    """The task class that trained ``ckpt`` when it evaluates checkpoints itself (``Task.evaluate_run``)."""
    from omnigpt.apps import TASKS, task_class
    from omnigpt.train.task import Task

    name = saved_recipe(ckpt).get("task")
    if name not in TASKS:
        return None
    cls = task_class(name)
    return cls if cls.evaluate_run.__func__ is not Task.evaluate_run.__func__ else None


def run_application(args: argparse.Namespace, ckpt: Path, task: type) -> int:
    out = Path(args.out) if args.out else run_dir_of(ckpt)
    out.mkdir(parents=True, exist_ok=True)
    result = {"checkpoint": str(ckpt), "task": task.name, **task.evaluate_run(ckpt, out, args.limit),
              **training_status(ckpt)}
    (out / "eval.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


def run_multimodal(args: argparse.Namespace, ckpt: Path) -> int:
    import dataclasses

    from omnigpt.apps.multimodal.task import recipe_eval_sources

    if args.data:
        from omnigpt.train.recipe import MMSource

        sources = [MMSource(dir=args.data, split=args.split or "test")]
    else:
        sources = recipe_eval_sources(ckpt)
    if args.limit is not None:
        sources = [dataclasses.replace(s, limit=args.limit) for s in sources]
    result = {"checkpoint": str(ckpt), **evaluate_checkpoint(ckpt, sources), **training_status(ckpt)}
    # runs/NAME/checkpoints/step_N → runs/NAME; a bare model directory gets the file beside it
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    out = Path(args.out) if args.out else run_dir / "eval.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


def evaluate_checkpoint(ckpt: str | Path, sources: Any = None, max_new_tokens: int = 24) -> dict[str, Any]:
    """Task metrics of a saved multimodal or contrastive model (kind from ``config.json``'s ``model_type``) on
    ``sources`` (default: the ``data.eval`` list of the recipe that trained it). Keys are ``SOURCE/metric``."""
    import omnigpt.apps.contrastive.task as contrastive
    import omnigpt.apps.multimodal.task as multimodal
    from omnigpt.checkpoints.pretrained import load_pretrained, model_type
    from omnigpt.text.processors import Processor

    ckpt = Path(ckpt)
    kind = model_type(ckpt)
    sources = multimodal.recipe_eval_sources(ckpt) if sources is None else sources
    model, processor = load_pretrained(ckpt), Processor.from_pretrained(ckpt)
    if kind == "omnigpt-multimodal":
        return multimodal.answer_metrics(model, processor, sources, max_new_tokens)
    if kind == "omnigpt-contrastive":
        return contrastive.retrieval_metrics(model, processor, sources)
    raise ValueError(f"{ckpt}: model_type {kind!r} is not a multimodal or contrastive model")
