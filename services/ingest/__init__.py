"""recpilot ingest service (see DESIGN.md)."""
