"""The server process: settings, connections, embedded services, health, logs, metrics, reflection."""
