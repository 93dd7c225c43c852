{#- The Proxy's heartbeat table on the primary (files/heartbeat.sql, which the loopback stack
    runs too): the Proxy writes its row there and reads it back on each replica to measure lag.
    Replication brings the table to the replicas. #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}
{%- import_text tpldir.split('/')[0] ~ '/files/heartbeat.sql' as heartbeat_sql %}
{%- set db = sqlgate.db %}

include:
  - .users

{#- The client reads the SQL from stdin (saltext.mysql's mysql_query breaks with PyMySQL). #}
sqlgate-db-heartbeat-table:
  cmd.run:
    - name: {{ db.client }} --socket={{ db.socket }} sqlgate
    - stdin: {{ heartbeat_sql | json }}
    - unless:
      - fun: sqlgate_db.table_exists
        schema: sqlgate
        table: heartbeat
        client: {{ db.client }}
        socket: {{ db.socket }}
    - require:
      - mysql_database: sqlgate-db-schema-sqlgate
