"""recpilot rl_feedback service (see DESIGN.md)."""
