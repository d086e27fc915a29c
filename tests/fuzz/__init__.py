"""Fuzzing omnigpt's readers of untrusted files (issue 24): a hypothesis harness over mutated tiny valid files.

Readers (``targets.TARGETS``): the GGUF reader, the CTranslate2 Whisper reader, the torchvision-pickle reader, the
safetensors + config.json checkpoint reader and the server's image / audio upload decoders. Each starts from tiny
valid files built here (``seeds``), mutated by hypothesis strategies (``mutations``: truncations, flipped bytes,
length / count / offset fields overwritten with huge, negative or off-by-one values, JSON values replaced,
random bytes). Every input must end in success or in a clear ``ValueError`` naming the file (a 400 naming the
parameter for the server's decoders): no other exception, no hang, no giant allocation (``harness``).

Entry points: ``scripts/fuzz.py --minutes N [--reader NAME]`` (long runs, one worker process at a time, a watchdog
for hangs in C code) and ``tests/fuzz/test_fuzz.py`` (fixed malformed cases in the default suite, a few hundred
hypothesis cases per reader behind ``-m slow``).
"""
