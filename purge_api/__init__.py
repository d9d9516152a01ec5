"""The purge service: REST API, event rules, the purge log and its fan-out to every edge."""
