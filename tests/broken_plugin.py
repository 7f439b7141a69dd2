"""A plugin module that fails on import, to check that it does not take the others down."""

raise ImportError("this plugin is broken on purpose")
