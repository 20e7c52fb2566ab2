"""What every model behind an OpenAI-compatible server shares: its spec, client, usage and served model id."""

from __future__ import annotations

import copy
from typing import Any

from ..constants import REMOTE_PREFIX
from ..errors import ModelError
from .client import CompletionsClient, Usage


class ServerModel:
    """A model at ``base_url`` reached through ``client``; ``served_name``: the requests' ``model`` field."""

    base_url: str
    client: CompletionsClient
    served_name: str | None

    @property
    def spec(self) -> str:
        return REMOTE_PREFIX + self.base_url

    @property
    def usage(self) -> Usage:
        return self.client.usage

    def close(self) -> None:
        self.client.close()

    def with_served_name(self, name: str) -> Any:
        """The same server's model ``name`` (a fine-tuned model behind the API is another model id), sharing this
        one's client (its cap, disk cache and counters); nothing remembered in memory is shared."""
        other = copy.copy(self)
        other.served_name = name
        other.forget()
        return other

    def forget(self) -> None:
        """Drop what this object remembers of answers in memory (a subclass's caches)."""

    def first_served_name(self) -> str | None:
        """The first model the server lists (``/models``), or ``None``."""
        try:
            data = self.client.get("/models").get("data") or []
        except ModelError:
            return None
        return str(data[0]["id"]) if data and isinstance(data[0], dict) and "id" in data[0] else None
