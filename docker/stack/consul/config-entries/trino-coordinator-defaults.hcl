# Trino's client protocol is HTTP: with protocol http the sidecars route it at L7, which
# c.ConsulSpawner.intention_mode = "L7" needs (each notebook may send only its own X-Trino-User).
# Fields: api-docs config-entries/service-defaults (Kind, Name, Protocol).
Kind     = "service-defaults"
Name     = "trino-coordinator"
Protocol = "http"
