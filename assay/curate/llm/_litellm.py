"""Import litellm offline: the bundled price map, no telemetry, no retries of its own.

litellm fetches its price map from the network at import unless told not to, and importing
it takes seconds; so assay imports it only when a hosted model is first called, with the
local map forced.
"""

from __future__ import annotations

import os
from types import ModuleType

_module: ModuleType | None = None


def get() -> ModuleType:
    global _module
    if _module is None:
        os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
        # tokenizers that litellm might load must come from the local cache only
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import litellm

        litellm.telemetry = False
        litellm.suppress_debug_info = True
        litellm.drop_params = True  # a param a provider lacks is dropped, not an error
        litellm.num_retries = 0
        litellm.disable_hf_tokenizer_download = (
            True  # tenacity in assay.curate.llm.retry does the retrying
        )
        _module = litellm
    return _module
