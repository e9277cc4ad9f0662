"""The target model as read from its directory, once (ARCHITECTURE.md, "One reader of the target")."""
