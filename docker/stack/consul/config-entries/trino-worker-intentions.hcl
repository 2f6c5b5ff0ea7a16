# Only the coordinator may call a worker (task scheduling, result exchange).
Kind = "service-intentions"
Name = "trino-worker"
Sources = [
  {
    Name        = "trino-coordinator"
    Action      = "allow"
    Description = "Trino coordinator schedules tasks on workers"
  },
]
