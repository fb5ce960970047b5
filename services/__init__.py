"""The hub's services: intake, mapper, notifier, and the mscc command."""
