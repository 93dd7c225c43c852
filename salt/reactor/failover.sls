{#- A database minion's watch job (sqlgate_db.watch) saw its IO thread lost from the primary for
    sqlgate:failover:detect_seconds: the failover runner checks the failure from every side
    and fails over once, whatever the number of such events (its lock; salt/_runners). The
    reactor has no requisites and may drop or repeat events: the watch job fires again every
    refire_seconds while the failure lasts. #}
sqlgate-reactor-failover:
  runner.sqlgate_failover.failover:
    - args:
      - reason: {{ ('primary unreachable from ' ~ data.get('id', '?')) | json }}
      - automatic: True
