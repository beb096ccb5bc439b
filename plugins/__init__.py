"""Built-in strategy plugins, each an ordinary pluggy plugin module."""
