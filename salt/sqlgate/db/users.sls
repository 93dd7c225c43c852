{#- Users and schemas on the primary; the replicas receive them through replication.

    Every user that connects over the network must use TLS (REQUIRE SSL); `sb@localhost` uses
    the socket. The Proxy has one user per scope (defaults.yaml db:app_users), each bounded in
    connections and, where the flavour has a per-user limit, in statement time; its health
    monitor has its own, and so has the mysqld_exporter (the only one with PROCESS, which
    it needs for the process list). No user gets SUPER, FILE, GRANT OPTION or data on *.*.
    The users are the formula's own state (_states/sqlgate_users.py): saltext.mysql's
    mysql_user cannot require TLS or set limits. #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}
{%- set db = sqlgate.db %}
{%- set secrets = sqlgate.secrets %}
{%- set ready = db.service ~ '-ready' %}
{%- set app_limits = {'max_user_connections': db.max_user_connections} %}
{%- if db.statement_limit_user %}
{%-   do app_limits.update({db.statement_limit_user: db.statement_seconds}) %}
{%- endif %}

{%- macro user(id, name, password, host='%', require_ssl=True, limits={}) %}

{{ id }}:
  sqlgate_users.present:
    - name: {{ name }}
    - host: '{{ host }}'
    - password: {{ password | json }}
    - identified: {{ db.identified_by_hash | json }}
    - require_ssl: {{ require_ssl }}
    - limits: {{ limits | json }}
    - client: {{ db.client }}
    - socket: {{ db.socket }}
    - require:
      - cmd: {{ ready }}
{%- endmacro %}

{%- macro grant(id, user_id, name, privileges, on, host='%', schema_id='') %}

{{ id }}:
  mysql_grants.present:
    - connection_unix_socket: {{ db.socket }}
    - grant: {{ privileges }}
    - database: '{{ on }}'
    - user: {{ name }}
    - host: '{{ host }}'
    - require:
      - sqlgate_users: {{ user_id }}
{%-   if schema_id %}
      - mysql_database: {{ schema_id }}
{%-   endif %}
{%- endmacro %}

include:
  - .service

{%- for schema in db.app_schemas + [db.monitor.schema, db.bench_schema] %}

sqlgate-db-schema-{{ schema }}:
  mysql_database.present:
    - connection_unix_socket: {{ db.socket }}
    - name: {{ schema }}
    - require:
      - cmd: {{ ready }}
{%- endfor %}

{#- The replicas read the binary log as this user. #}
{{- user('sqlgate-db-users-repl', db.repl_user, secrets.repl_password) }}
{{- grant('sqlgate-db-grants-repl', 'sqlgate-db-users-repl', db.repl_user, 'REPLICATION SLAVE',
          '*.*') }}

{#- The Proxy's users, one per scope, each working in the application schemas only. #}
{%- for scope, spec in db.app_users | dictsort %}
{%-   set user_id = 'sqlgate-db-users-app-' ~ scope %}
{{-   user(user_id, spec.user, secrets['app_' ~ scope ~ '_password'], limits=app_limits) }}
{%-   for schema in db.app_schemas %}
{{-     grant('sqlgate-db-grants-app-' ~ scope ~ '-' ~ schema, user_id, spec.user,
              spec.privileges, schema ~ '.*', schema_id='sqlgate-db-schema-' ~ schema) }}
{%-   endfor %}
{%- endfor %}

{#- The Proxy's health monitor: the replicas' status (the flavour's privilege), and the
    heartbeat in its own schema. #}
{%- set monitor = db.monitor %}
{{- user('sqlgate-db-users-monitor', monitor.user, secrets.monitor_password) }}
{{- grant('sqlgate-db-grants-monitor', 'sqlgate-db-users-monitor', monitor.user,
          db.monitor_privilege, '*.*') }}
{{- grant('sqlgate-db-grants-monitor-' ~ monitor.schema, 'sqlgate-db-users-monitor',
          monitor.user, monitor.privileges, monitor.schema ~ '.*',
          schema_id='sqlgate-db-schema-' ~ monitor.schema) }}

{#- The database hosts' mysqld_exporter: the server's status, process list and replication
    (the flavour's exporter_privileges), performance_schema read-only; from the host itself,
    over TLS, at most a few connections. #}
{%- set exporter = db.exporter %}
{{- user('sqlgate-db-users-exporter', exporter.user, secrets.exporter_password,
         host=exporter.host, limits={'max_user_connections': exporter.max_user_connections}) }}
{{- grant('sqlgate-db-grants-exporter', 'sqlgate-db-users-exporter', exporter.user,
          db.exporter_privileges, '*.*', host=exporter.host) }}
{{- grant('sqlgate-db-grants-exporter-performance-schema', 'sqlgate-db-users-exporter',
          exporter.user, 'SELECT', 'performance_schema.*', host=exporter.host) }}

{#- sysbench, owning its own schema, over the socket only. #}
{{- user('sqlgate-db-users-sb', 'sb', secrets.sb_password, host='localhost', require_ssl=False) }}
{{- grant('sqlgate-db-grants-sb', 'sqlgate-db-users-sb', 'sb', 'ALL PRIVILEGES',
          db.bench_schema ~ '.*', host='localhost',
          schema_id='sqlgate-db-schema-' ~ db.bench_schema) }}

{#- No `app` user, one for every scope, may exist: it goes with its privileges. #}
sqlgate-db-users-app-retired:
  sqlgate_users.absent:
    - name: app
    - host: '%'
    - client: {{ db.client }}
    - socket: {{ db.socket }}
    - require:
      - cmd: {{ ready }}
