{#- One database node, whatever its role in the role table: what it plays comes from the
    pillar's current primary (map.jinja's current_primary, written by the failover runner),
    so that a highstate after a failover keeps the new shape instead of undoing it.

    - The current primary: made writable when that is safe (db/writable.sls), then the users,
      Sakila and the Proxy's heartbeat table.
    - Every other node follows it (db/replication.sls), except a quarantined one (its history
      diverged: pillar sqlgate:failover:quarantined), which is left alone until rebuilt.
    - Every node runs the watch job that detects a lost primary (db/watch.sls). #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate, current_primary with context %}

include:
  - sqlgate.db
  - sqlgate.db.watch
{%- if grains.id == current_primary %}
  - sqlgate.db.writable
  - sqlgate.db.users
  - sqlgate.db.sakila
  - sqlgate.db.heartbeat
{%- elif grains.id not in sqlgate.failover.quarantined %}
  - sqlgate.db.replication
{%- endif %}
