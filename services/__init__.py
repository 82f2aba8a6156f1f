"""The five recpilot services; each runs as `python -m services.<name>`."""
