"""The fixtures of test_two_hubs.py (two hubs on either bus) for the other cluster tests."""

from tests.cluster.test_two_hubs import bus_name, cluster, rabbitmq

__all__ = ["bus_name", "cluster", "rabbitmq"]
