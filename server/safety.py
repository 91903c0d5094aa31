"""The safety checks a running platform shares: the input guard, the moderation checker, the PII redactor.

Built from the settings once per process. The Presidio redactor is built on first use (it takes a moment and some
memory, and most deployments redact for few apps); the guard and the local moderation checker are cheap.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from chains.safety.injection import InjectionDetector
from chains.safety.moderation import LocalModerationChecker, ModerationChecker, OpenAIModerationChecker
from chains.safety.pii_policy import NER_ENTITIES, PiiPolicy
from errors import InvalidRequest
from server.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class SafetyChecks:
    guard: InjectionDetector
    moderation: ModerationChecker
    spacy_model: str | None = None
    hash_salt: str = ""
    _redactor: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def build(cls, settings: Settings) -> SafetyChecks:
        moderation: ModerationChecker
        if settings.moderation_url:
            moderation = OpenAIModerationChecker(
                settings.moderation_url,
                os.environ.get(settings.moderation_api_key_env, ""),
                model=settings.moderation_model,
            )
        else:
            moderation = LocalModerationChecker()
        if settings.pii_policy is not None:
            check_pii_policy(settings.pii_policy, param="GENAI_PII_POLICY", ner=settings.pii_spacy_model is not None)
        return cls(
            guard=InjectionDetector(settings.guard_classifier_path),
            moderation=moderation,
            spacy_model=settings.pii_spacy_model,
            hash_salt=settings.pii_hash_salt.get_secret_value(),
        )

    def redactor(self) -> Any:
        """The process's Presidio redactor (``chains.safety.pii.PiiRedactor``), built by the first caller: seconds,
        most of them importing Presidio and spaCy, so not on the event loop (thread-safe)."""
        if self._redactor is None:
            with self._lock:
                if self._redactor is None:
                    from chains.safety.pii import PiiRedactor

                    self._redactor = PiiRedactor(spacy_model=self.spacy_model, hash_salt=self.hash_salt)
        return self._redactor

    def warm_up(self) -> None:
        """Build the redactor in a background thread (from the event loop; it is used once it is ready)."""
        thread = threading.Thread(target=self._build_quietly, name="pii-warm-up", daemon=True)
        thread.start()

    def _build_quietly(self) -> None:
        try:
            self.redactor()
        except Exception:
            log.exception("the PII redactor could not be built")

    def check_policy(self, policy: Any, *, param: str = "pii_policy") -> dict[str, Any]:
        return check_pii_policy(policy, param=param, ner=self.spacy_model is not None)


def check_pii_policy(policy: Any, *, param: str = "pii_policy", ner: bool = False) -> dict[str, Any]:
    """A PII policy as stored: validated, in its canonical form; a 400 naming what is wrong. ``ner``: a spaCy model
    is configured, so names (PERSON) can be found."""
    if not isinstance(policy, dict):
        raise InvalidRequest(
            f'`{param}` must be an object like {{"entities": [...], "action": "replace"}}.', param=param
        )
    entities = policy.get("entities")
    if isinstance(entities, list) and all(isinstance(entity, str) for entity in entities):
        policy = {**policy, "entities": [entity.upper() for entity in entities]}  # email_address is EMAIL_ADDRESS
    try:
        checked = PiiPolicy.from_dict(policy)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"`{param}` is invalid: {exc}", param=param) from None
    if not ner and (names := [entity for entity in checked.entities if entity in NER_ENTITIES]):
        raise InvalidRequest(
            f"`{param}` names {', '.join(names)}, which needs a spaCy model: set GENAI_PII_SPACY_MODEL to an "
            "installed one (see the README).",
            param=param,
        )
    return checked.as_dict()
