"""CPU speed, kept apart from the readable models: planned bf16 GEMMs (``matmul``), the CPU flash-attention with an
fp32 backward (``attention``), the fused LM-head cross-entropy (``losses``), int8/int4 weight-only linears
(``quantize``), batch-1 decoding's planned matrix–vector products (``matvec``).
Models call these; nothing here knows about models."""
