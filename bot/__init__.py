"""The application: configuration, services, the AI gateway, the sidecar and the CLI."""

__version__ = "0.1.0"
