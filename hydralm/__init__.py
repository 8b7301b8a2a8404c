"""HydraLM: a hybrid of Gated DeltaNet and sliding-window attention layers
whose inference state has a fixed size however many tokens it has read."""

__version__ = "0.1.0"
