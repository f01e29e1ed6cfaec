"""A minimal core/v1 Secret: enough to read storage and hypervisor credentials."""

from __future__ import annotations

import base64
import dataclasses
from typing import Annotated, ClassVar

from manager.api._codec import JsonField
from manager.api.meta import ObjectMeta, Resource

DATA_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"


@dataclasses.dataclass(kw_only=True, slots=True)
class Secret(Resource):
    """``data`` holds base64 text (as on the wire); ``stringData`` plain text that the API
    server merges over ``data`` on write. ``decoded()`` gives the effective bytes."""

    API_VERSION: ClassVar[str] = "v1"
    KIND: ClassVar[str] = "Secret"

    metadata: ObjectMeta
    type: str = "Opaque"
    data: Annotated[
        dict[str, Annotated[str, JsonField(fmt="byte")]],
        JsonField(key_pattern=DATA_KEY_PATTERN),
    ] = dataclasses.field(default_factory=dict)
    string_data: Annotated[dict[str, str], JsonField(key_pattern=DATA_KEY_PATTERN)] = (
        dataclasses.field(default_factory=dict)
    )
    immutable: bool | None = None

    def decoded(self) -> dict[str, bytes]:
        """Effective contents: ``data`` decoded, overlaid with ``stringData``."""
        out = {key: base64.b64decode(value) for key, value in self.data.items()}
        out.update({key: value.encode() for key, value in self.string_data.items()})
        return out

    def get(self, key: str) -> str | None:
        """One value as UTF-8 text, or None when the key is absent."""
        value = self.decoded().get(key)
        return None if value is None else value.decode()
