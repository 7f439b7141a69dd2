"""Built-in plugins of the harness, registered through the same entry points a third party uses."""
