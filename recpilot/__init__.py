"""recpilot: the common package every service imports.

Settings, JSON logging, the Kafka consume loop, the health/metrics HTTP server, graceful
shutdown, the topic catalogue, the local stack manager and the generated protobuf modules
(`recpilot.pb`) live here, once.
"""

__version__ = "0.1.0"
