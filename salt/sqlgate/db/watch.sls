{#- The detection job (sqlgate_db.watch), every watch_seconds on every database node: a replica
    that lost its primary for detect_seconds fires sqlgate/db/primary-unreachable (again every
    refire_seconds while it lasts: the reconcile that covers a lost event); a node that follows
    nobody and is not the primary fires sqlgate/db/rejoin; the primary, cut off from all its
    replicas for fence_seconds, makes itself read-only. The reactor on the master answers
    both with the failover runner. No return reaches the master's job cache. #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}
{%- set failover = sqlgate.failover %}

sqlgate-db-watch:
  schedule.present:
    - function: sqlgate_db.watch
    - seconds: {{ failover.watch_seconds }}
    - job_kwargs:
        detect_seconds: {{ failover.detect_seconds }}
        probe_seconds: {{ failover.probe_seconds }}
        refire_seconds: {{ failover.refire_seconds }}
        fence_seconds: {{ failover.fence_seconds }}
        fence_steps: {{ {'fence': sqlgate.db.fence} | json }}
        client: {{ sqlgate.db.client }}
        socket: {{ sqlgate.db.socket }}
    - return_job: False
    - maxrunning: 1
    - persist: True
