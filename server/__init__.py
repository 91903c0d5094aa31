"""The HTTP server: app factory, routes, settings, CLI."""
