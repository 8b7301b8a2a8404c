"""Screens of the hydra-chat app, one per file."""
