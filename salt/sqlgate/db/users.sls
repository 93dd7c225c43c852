{#- Users and schemas on the primary; the replicas receive them through replication. #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}
{%- set db = sqlgate.db %}
{%- set secrets = sqlgate.secrets %}
{%- set ready = db.service ~ '-ready' %}

include:
  - .service

{%- for schema in db.app_schemas + [db.bench_schema] %}

sqlgate-db-schema-{{ schema }}:
  mysql_database.present:
    - connection_unix_socket: {{ db.socket }}
    - name: {{ schema }}
    - require:
      - cmd: {{ ready }}
{%- endfor %}

{#- `repl`: the replicas read the binary log as this user. #}
sqlgate-db-users-repl:
  mysql_user.present:
    - connection_unix_socket: {{ db.socket }}
    - name: repl
    - host: '%'
    - password: {{ secrets.repl_password | json }}
    - require:
      - cmd: {{ ready }}

sqlgate-db-grants-repl:
  mysql_grants.present:
    - connection_unix_socket: {{ db.socket }}
    - grant: REPLICATION SLAVE
    - database: '*.*'
    - user: repl
    - host: '%'
    - require:
      - mysql_user: sqlgate-db-users-repl

{#- `app`: the Proxy's user, working in the application schemas only. #}
sqlgate-db-users-app:
  mysql_user.present:
    - connection_unix_socket: {{ db.socket }}
    - name: app
    - host: '%'
    - password: {{ secrets.app_password | json }}
    - require:
      - cmd: {{ ready }}
{%- for schema in db.app_schemas %}

sqlgate-db-grants-app-{{ schema }}:
  mysql_grants.present:
    - connection_unix_socket: {{ db.socket }}
    - grant: {{ db.app_privileges }}
    - database: {{ schema }}.*
    - user: app
    - host: '%'
    - require:
      - mysql_user: sqlgate-db-users-app
      - mysql_database: sqlgate-db-schema-{{ schema }}
{%- endfor %}

{#- The Proxy's monitor reads SHOW REPLICA STATUS with the flavour's privilege. #}
sqlgate-db-grants-app-monitor:
  mysql_grants.present:
    - connection_unix_socket: {{ db.socket }}
    - grant: {{ db.monitor_privilege }}
    - database: '*.*'
    - user: app
    - host: '%'
    - require:
      - mysql_user: sqlgate-db-users-app

{#- `sb@localhost`: sysbench, owning its own schema. #}
sqlgate-db-users-sb:
  mysql_user.present:
    - connection_unix_socket: {{ db.socket }}
    - name: sb
    - host: localhost
    - password: {{ secrets.sb_password | json }}
    - require:
      - cmd: {{ ready }}

sqlgate-db-grants-sb:
  mysql_grants.present:
    - connection_unix_socket: {{ db.socket }}
    - grant: ALL PRIVILEGES
    - database: {{ db.bench_schema }}.*
    - user: sb
    - host: localhost
    - require:
      - mysql_user: sqlgate-db-users-sb
      - mysql_database: sqlgate-db-schema-{{ db.bench_schema }}
