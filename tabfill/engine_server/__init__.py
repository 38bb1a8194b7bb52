"""The team engine: one process owns the model and serves many editors (see docs/ENGINE_PROTOCOL.md)."""
