"""Checkpoints: atomic directories with SHA-256 manifests (``io``), the pretrained layer that saves and loads every
model kind by ``model_type`` (``pretrained``), Hugging Face key tables and configs (``hf``), training state
(``state``) and pinned registry assets (``assets``)."""
