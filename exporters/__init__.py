"""tapeserve package."""
