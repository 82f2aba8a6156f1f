"""Helpers shared by test files (test files import from here or use conftest fixtures, never
from each other): a private Kafka broker, repository builders, service processes on per-test
topics."""
