{#- Users and schemas on the primary; the replicas receive them through replication. #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}
{%- set db = sqlgate.db %}
{%- set secrets = sqlgate.secrets %}

include:
  - .service

{%- for schema in db.app_schemas + [db.bench_schema] %}

schema {{ schema }} exists:
  mysql_database.present:
    - connection_unix_socket: {{ db.socket }}
    - name: {{ schema }}
    - require:
      - cmd: {{ db.service }} is ready
{%- endfor %}

replication user repl exists:
  mysql_user.present:
    - connection_unix_socket: {{ db.socket }}
    - name: repl
    - host: '%'
    - password: {{ secrets.repl_password | json }}
    - require:
      - cmd: {{ db.service }} is ready

replication user repl may read the binary log:
  mysql_grants.present:
    - connection_unix_socket: {{ db.socket }}
    - grant: REPLICATION SLAVE
    - database: '*.*'
    - user: repl
    - host: '%'
    - require:
      - mysql_user: replication user repl exists

application user app exists:
  mysql_user.present:
    - connection_unix_socket: {{ db.socket }}
    - name: app
    - host: '%'
    - password: {{ secrets.app_password | json }}
    - require:
      - cmd: {{ db.service }} is ready
{%- for schema in db.app_schemas %}

application user app works in schema {{ schema }} only:
  mysql_grants.present:
    - connection_unix_socket: {{ db.socket }}
    - grant: {{ db.app_privileges }}
    - database: {{ schema }}.*
    - user: app
    - host: '%'
    - require:
      - mysql_user: application user app exists
      - mysql_database: schema {{ schema }} exists
{%- endfor %}

application user app may watch replication:
  mysql_grants.present:
    - connection_unix_socket: {{ db.socket }}
    - grant: {{ db.monitor_privilege }}
    - database: '*.*'
    - user: app
    - host: '%'
    - require:
      - mysql_user: application user app exists

benchmark user sb exists on localhost:
  mysql_user.present:
    - connection_unix_socket: {{ db.socket }}
    - name: sb
    - host: localhost
    - password: {{ secrets.sb_password | json }}
    - require:
      - cmd: {{ db.service }} is ready

benchmark user sb owns schema {{ db.bench_schema }}:
  mysql_grants.present:
    - connection_unix_socket: {{ db.socket }}
    - grant: ALL PRIVILEGES
    - database: {{ db.bench_schema }}.*
    - user: sb
    - host: localhost
    - require:
      - mysql_user: benchmark user sb exists on localhost
      - mysql_database: schema {{ db.bench_schema }} exists
