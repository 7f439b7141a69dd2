"""Configuration: the registry file's schema, plugin loading, and the merged registry."""
