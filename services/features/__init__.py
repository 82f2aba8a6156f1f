"""recpilot features service (see DESIGN.md)."""
