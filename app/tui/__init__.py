"""The Textual app of hydra-chat: `HydraChatApp` in `app.tui.app`."""
