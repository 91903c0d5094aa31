"""Safety checks: input screening (prompt injection), output filters (PII redaction, moderation)."""
