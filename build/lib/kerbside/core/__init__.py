"""The ground floor every area stands on: registry, wire-contract tables, line protocol,
the InfluxDB HTTP client, settings and the error root.

Nothing here imports an area (collector, provisioning, analysis, simulator) or the CLI;
tests/test_layers.py fails when an arrow points up.
"""
