"""The coordinator's scheduling core: decisions as plain objects (events in, actions out)."""
