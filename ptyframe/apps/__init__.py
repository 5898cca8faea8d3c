"""User-facing tools: command line, config building, demo, migration, direct-method runner, docs."""
