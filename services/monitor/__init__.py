"""recpilot monitor service (see DESIGN.md)."""
