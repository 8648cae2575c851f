"""Preset definitions, one module per family; ``pushforward.flows`` re-exports them."""
