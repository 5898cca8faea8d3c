"""Plugin machinery: hook specifications, entry-point loader, (kind, name) registry."""
