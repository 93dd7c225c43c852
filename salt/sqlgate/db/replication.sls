{#- Replication from the primary, by GTID, over TLS checked against the cluster CA, with the
    formula's own states (_states/sqlgate_replication.py): they read the replica's status, so a
    second highstate changes nothing, and a replica set up before TLS is switched to it. The
    password goes to the client on stdin, never on a command line or into the state output. #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate, address_of, current_primary with context %}
{%- from tpldir.split('/')[0] ~ '/tls.jinja' import tls with context %}
{%- set db = sqlgate.db %}

include:
  - .tls
  - .service

{#- The replica follows the current primary (the flavour's CHANGE statement, flavours.yaml).
    A node that follows nobody but has a history of its own (a former primary) is left to the
    failover runner, which checks it for errant transactions first (sqlgate_failover.rejoin). #}
sqlgate-db-replication-source:
  sqlgate_replication.following:
    - source: {{ address_of(current_primary) }}
    - fresh_only: True
    - port: {{ sqlgate.ports.mysql }}
    - user: {{ db.repl_user }}
    - password: {{ sqlgate.secrets.repl_password | json }}
    - change_source: {{ db.change_source | json }}
    - ssl_ca: {{ tls.ca }}
    - change_source_ssl: {{ db.change_source_ssl | json }}
    - client: {{ db.client }}
    - socket: {{ db.socket }}
    - require:
      - cmd: {{ db.service }}-ready
      - file: sqlgate-tls-ca

{#- Its IO and SQL threads run (an IO thread still `Connecting` counts as running). #}
sqlgate-db-replication-running:
  sqlgate_replication.running:
    - fresh_only: True
    - client: {{ db.client }}
    - socket: {{ db.socket }}
    - require:
      - sqlgate_replication: sqlgate-db-replication-source
