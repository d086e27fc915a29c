"""Training: one ``Trainer`` (``trainer``) driving a ``Task`` (``tasks``: lm, multimodal, contrastive), one recipe
schema (``recipe``), optimizer groups + schedules + stages (``schedule``), evaluation and metrics."""
