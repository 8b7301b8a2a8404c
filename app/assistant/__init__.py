"""The answer path: recall from memory, then a faithful, checked answer."""

from app.assistant.answer import Answer, Assistant, AssistantSettings

__all__ = ["Answer", "Assistant", "AssistantSettings"]
