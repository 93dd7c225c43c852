{#- The current primary takes writes (docs/failover.md): at first setup it is promoted (epoch
    row written, read-only OFF last); a primary that restarted read-only is made writable
    again only when its epoch row is the pillar's epoch with its own name. A node whose row
    says otherwise, or that still follows a source, is left read-only and the state fails:
    the failover runner decides (sqlgate_failover). #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}
{%- set db = sqlgate.db %}

include:
  - .service

sqlgate-db-writable:
  sqlgate_replication.writable:
    - epoch: {{ db.epoch }}
    - host: {{ grains.id }}
    - steps:
        promote: {{ db.promote | json }}
        epoch_write: {{ db.epoch_write | json }}
        open_writes: {{ db.open_writes | json }}
    - client: {{ db.client }}
    - socket: {{ db.socket }}
    - require:
      - cmd: {{ db.service }}-ready
