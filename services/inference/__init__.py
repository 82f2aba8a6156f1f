"""recpilot inference service (see DESIGN.md)."""
