# Who may call trino-coordinator, besides the notebooks (ConsulSpawner adds and removes one
# source per running server in this same entry, and never touches these).
# Written by consul/acl-init.sh only when the entry does not exist yet, so a re-run never wipes
# the notebooks' sources. Fields: config-entries/service-intentions (Kind, Name, Sources[Name,
# Action, Description]).
Kind = "service-intentions"
Name = "trino-coordinator"
Sources = [
  {
    # The article's report generator (../shared/context/001_*): orchestrator -> trino-coordinator.
    Name        = "orchestrator"
    Action      = "allow"
    Description = "report orchestrator queries Trino"
  },
  {
    # Workers announce themselves and heartbeat to the coordinator (discovery.uri).
    Name        = "trino-worker"
    Action      = "allow"
    Description = "Trino worker discovery and heartbeats"
  },
]
