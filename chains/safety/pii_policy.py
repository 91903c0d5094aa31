"""An app's PII policy: which entities its answers are redacted of, and how. Kept apart from ``chains.safety.pii``
(which imports Presidio and spaCy, seconds at start-up), so that settings, the admin API and the CLI can check a
policy without loading them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

Action = Literal["replace", "mask", "hash"]
ACTIONS: tuple[str, ...] = get_args(Action)

# Entities found by patterns (and checksums) alone, in the order of the docs; each needs a digit except the e-mail.
PATTERN_ENTITIES: tuple[str, ...] = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "IP_ADDRESS",
    "US_SSN",
    "US_ITIN",
    "UK_NINO",
    "UK_NHS",
    "ES_NIF",
    "ES_NIE",
    "IT_FISCAL_CODE",
    "PL_PESEL",
    "FI_PERSONAL_IDENTITY_CODE",
    "SG_NRIC_FIN",
)
NER_ENTITIES: tuple[str, ...] = ("PERSON",)  # only with a spaCy model


@dataclass(frozen=True)
class PiiPolicy:
    """What an app redacts and how: stored per app as JSON (``as_dict``/``from_dict``).

    * ``replace``: ``<EMAIL_ADDRESS>``.
    * ``mask``: every character replaced by ``*`` (the length kept); card numbers keep their separators and last 4
      digits, as on a receipt (``**** **** **** 1111``).
    * ``hash``: ``<EMAIL_ADDRESS:3f2a9c1b>``, an HMAC-SHA256 prefix keyed with the deployment's salt, of the value
      normalised (e-mails case-folded, other entities reduced to letters and digits), so that equal values map to
      equal placeholders across answers and apps of one deployment, and to other ones elsewhere.
    """

    entities: tuple[str, ...] = PATTERN_ENTITIES
    action: Action = "replace"

    def __post_init__(self) -> None:
        if isinstance(self.entities, str) or not isinstance(self.entities, Iterable):
            raise ValueError("PII policy: entities must be a list of entity names")  # noqa: TRY004 (a 400, not a bug)
        entities = tuple(dict.fromkeys(self.entities))  # in order, without repeats
        for entity in entities:
            if entity not in PATTERN_ENTITIES + NER_ENTITIES:
                known = ", ".join(PATTERN_ENTITIES + NER_ENTITIES)
                raise ValueError(f"PII policy: unknown entity {entity!r} (known: {known})")
        if self.action not in ACTIONS:
            raise ValueError(f"PII policy: unknown action {self.action!r} (one of: {', '.join(ACTIONS)})")
        object.__setattr__(self, "entities", entities)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PiiPolicy:
        if not isinstance(data, Mapping):
            raise ValueError("PII policy: expected an object with 'entities' and/or 'action'")  # noqa: TRY004
        unknown = set(data) - {"entities", "action"}
        if unknown:
            raise ValueError(f"PII policy: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        entities = data.get("entities", PATTERN_ENTITIES)
        if isinstance(entities, str) or not isinstance(entities, (list, tuple)):
            raise ValueError("PII policy: entities must be a list of entity names")  # noqa: TRY004
        return cls(entities=tuple(entities), action=data.get("action", "replace"))

    def as_dict(self) -> dict[str, Any]:
        return {"entities": list(self.entities), "action": self.action}
