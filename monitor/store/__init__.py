"""Redis storage: one module per key family, every key under the configured prefix."""
