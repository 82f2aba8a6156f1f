"""The local stack manager: a real Kafka broker, a real Redis and the services on one machine.

Used by the CLI (`recpilot up/down/status`) and by the integration tests. Everything it starts is
recorded in ``<home>/run/<name>.json`` (pid, process start time, command, address), so ``down``
stops exactly what ``up`` started and nothing else.
"""
