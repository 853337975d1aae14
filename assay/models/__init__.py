"""Local models: the registry (embedded default, HF dirs, GGUF, adapters), the in-process
batched backend, multi-LoRA, constrained decoding, chat formats, optional vLLM and
`assay serve`.

The LLM client reaches this package only through the `local/` model prefix, which registers
`local_backend` on first use; the trainers import the registry and adapters from here.
"""
