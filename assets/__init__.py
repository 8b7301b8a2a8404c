"""Data shipped with hydra-chat: default config, checksums and samples."""
