"""`UsesLLM`: the settings and the shared client of a stage that calls a model.

A stage class that inherits it (`class Generate(AsyncStage, UsesLLM)`) takes every
`LLMSettings` field as a parameter (model, api_base, limits, retries...), gets the process's
shared client for those settings on first use, and can be pointed at another client in tests
or for re-asks (`use_client`).
"""

from __future__ import annotations

from typing import Self

from pydantic import PrivateAttr

from assay.curate.llm.client import LLMClient, LLMSettings, client_for


class UsesLLM(LLMSettings):
    _client: LLMClient | None = PrivateAttr(default=None)

    def settings(self) -> LLMSettings:
        """The stage's LLM settings alone (what identifies its client)."""
        return LLMSettings(**{k: getattr(self, k) for k in LLMSettings.model_fields})

    @property
    def client(self) -> LLMClient:
        if self._client is None:
            self._client = client_for(self.settings())
        return self._client

    def use_client(self, client: LLMClient) -> Self:
        self._client = client
        return self
