{#- A database node follows nobody and is not the pillar's primary (a former primary started
    again), or is the primary and came back read-only: the runner decides whether it follows
    the primary, is quarantined, or takes writes again (sqlgate_failover.rejoin). The node is
    the minion id the master authenticated the event with (`data.id`), not what it says. #}
sqlgate-reactor-rejoin:
  runner.sqlgate_failover.rejoin:
    - args:
      - node: {{ data.get('id', '') | json }}
