"""Formats shared by the multimodal data recipes: LLaVA-style conversation JSON, caption JSON Lines, the answer
prompt, and the checks that name a missing Debian package or tool."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from omnigpt.files.workers import run as run_child
from omnigpt.text.processors import AUDIO_TOKEN, IMAGE_TOKEN


class AssetMissing(FileNotFoundError):
    """A recipe's system package or tool is not installed; the message says what to install."""


def require(path: Path, package: str) -> Path:
    if not path.exists():
        raise AssetMissing(f"{path} not found: install the Debian package {package} (apt-get install {package})")
    return path


def require_tool(tool: str, package: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise AssetMissing(f"{tool} not found: install the Debian package {package} (apt-get install {package})")
    return found


def package_version(package: str) -> str | None:
    """Installed Debian package version (recorded in each manifest), or None off Debian."""
    try:
        out = run_child(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True,
                        timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


# ------------------------------------------------------------------------------------------------------------
# The two general formats


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_conversations(path: Path, conversations: Sequence[dict[str, Any]]) -> int:
    """A JSON list with one conversation per line (valid JSON, and diffs / ``head`` stay readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = ",\n".join(json.dumps(c, ensure_ascii=False) for c in conversations)
    path.write_text(f"[\n{body}\n]\n" if conversations else "[]\n", encoding="utf-8")
    return len(conversations)


def _resolve(base: Path, value: Any, where: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) and v for v in items):
        raise ValueError(f"{where}: media paths must be non-empty strings, got {value!r}")
    return [str(p if Path(p).is_absolute() else base / p) for p in items]


def read_captions(path: str | Path) -> list[dict[str, Any]]:
    """Caption JSONL → records with absolute ``image`` / ``audio`` paths; bad lines raise naming line and key."""
    path = Path(path)
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{i}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: invalid JSON: {e}") from e
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise ValueError(f"{where}: a caption record needs a string 'text'")
        if ("image" in rec) == ("audio" in rec):
            raise ValueError(f"{where}: a caption record needs exactly one of 'image' or 'audio'")
        key = "image" if "image" in rec else "audio"
        rec[key] = _resolve(path.parent, rec[key], where)[0]
        out.append(rec)
    return out


def caption_to_conversation(rec: dict[str, Any], question: str) -> dict[str, Any]:
    """One caption record → one single-turn LLaVA-style conversation asking ``question`` about the media."""
    key, ph = ("image", IMAGE_TOKEN) if "image" in rec else ("audio", AUDIO_TOKEN)
    return {"id": rec["id"], key: rec[key],
            "conversations": [{"from": "human", "value": f"{ph}\n{question}"}, {"from": "gpt", "value": rec["text"]}]}


def read_conversations(path: str | Path) -> list[dict[str, Any]]:
    """LLaVA-style JSON → conversations with absolute media lists (``images``, ``audio``) and checked turns."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON: {e}") from e
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of conversations")
    out = []
    for i, conv in enumerate(data):
        where = f"{path}[{i}]"
        turns = conv.get("conversations") if isinstance(conv, dict) else None
        if not isinstance(turns, list) or not turns:
            raise ValueError(f"{where}: needs a non-empty 'conversations' list")
        for t in turns:
            if not isinstance(t, dict) or t.get("from") not in ("human", "gpt") or not isinstance(t.get("value"), str):
                raise ValueError(f"{where}: each turn needs 'from' ('human' or 'gpt') and a string 'value'")
        if turns[-1]["from"] != "gpt":
            raise ValueError(f"{where}: the last turn must be the model's ('from': 'gpt')")
        images = _resolve(path.parent, conv["image"], where) if "image" in conv else []
        audio = _resolve(path.parent, conv["audio"], where) if "audio" in conv else []
        text = "".join(t["value"] for t in turns).replace("<image>", IMAGE_TOKEN)
        if text.count(IMAGE_TOKEN) != len(images) or text.count(AUDIO_TOKEN) != len(audio):
            raise ValueError(f"{where}: {text.count(IMAGE_TOKEN)} image / {text.count(AUDIO_TOKEN)} audio "
                             f"placeholders but {len(images)} images / {len(audio)} clips")
        turns = [{**t, "value": t["value"].replace("<image>", IMAGE_TOKEN)} for t in turns]
        out.append({"id": conv.get("id", str(i)), "images": images, "audio": audio, "conversations": turns})
    return out


def conversation_prompt(conv: dict[str, Any], user: str = "User: ", assistant: str = "\nAssistant: ",
                        ) -> tuple[str, str]:
    """(prompt, answer) for training: every turn before the last is context, the last (model) turn the answer.

    The prompt goes to ``Processor(text=…, answers=…)``, which puts the loss on the answer only."""
    turns = conv["conversations"]
    parts = []
    for t in turns[:-1]:
        parts.append((user if t["from"] == "human" else assistant) + t["value"])
    return "".join(parts) + assistant, turns[-1]["value"]


# ------------------------------------------------------------------------------------------------------------
# Fashion-MNIST
