"""CPU speed, kept apart from the readable models: planned bf16 GEMMs (``matmul``), the CPU flash-attention with an
fp32 backward (``attention``), the fused LM-head cross-entropy (``losses``), int8/int4 weight-only linears
(``quantize``), batch-1 decoding's planned matrix–vector products (``matvec``).
Nothing here knows about models: the callers swap these in by module replacement (``use_planned_linears``,
``use_fp32_backward_attention``, ``quantize``), so a model's forward stays the readable one."""
