{#- The Proxy's heartbeat table on the primary (files/heartbeat.sql, which the loopback stack
    runs too): the Proxy writes its row there and reads it back on each replica to measure lag.
    Replication brings the table to the replicas. #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}
{%- import_text tpldir.split('/')[0] ~ '/files/heartbeat.sql' as heartbeat_sql %}
{%- set db = sqlgate.db %}
{%- set client = db.client ~ ' --socket=' ~ db.socket %}

include:
  - .users

{#- The client reads the SQL from stdin (saltext.mysql's mysql_query breaks with PyMySQL). #}
heartbeat table exists:
  cmd.run:
    - name: {{ client }} sqlgate
    - stdin: {{ heartbeat_sql | json }}
    - unless: >-
        test "$({{ client }} -N -e "SELECT COUNT(*) FROM information_schema.tables
        WHERE table_schema = 'sqlgate' AND table_name = 'heartbeat'")" = 1
    - require:
      - mysql_database: schema sqlgate exists
