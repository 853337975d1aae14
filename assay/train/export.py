"""`assay export`: a trained LoRA adapter as full merged weights (safetensors) or alone.

Example:
    export_model("smollm2-135m+adder", "out/adder-merged")            # merged, loads anywhere
    export_model("smollm2-135m+adder", "out/adder-lora", merge=False)  # the adapter only
"""

from __future__ import annotations

import shutil
from pathlib import Path

from assay.curate.errors import AssayError


def export_model(name: str, out: str | Path, merge: bool = True) -> Path:
    """Write `name` (a registered `base+adapter`) to `out`; returns `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from assay.models.registry import materialize, resolve_model

    spec = resolve_model(name)
    if spec.adapter is None:
        raise AssayError(f"{name!r} has no adapter to export; name one as base+adapter")
    out = Path(out)
    if not merge:
        shutil.copytree(spec.adapter, out, dirs_exist_ok=True)
        return out
    from peft import PeftModel

    directory = materialize(spec)
    base = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, spec.adapter).merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(directory).save_pretrained(out)
    return out
