{#- The database server, running and answering: other states require `cmd: <service>-ready`
    (mariadb-ready or mysql-ready, services.jinja). #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}
{%- from tpldir.split('/')[0] ~ '/services.jinja' import managed_service with context %}
{%- set db = sqlgate.db %}

include:
  - .config
{%- if sqlgate.service_manager == 'supervisor' %}
  - sqlgate.supervisor
{%- endif %}

{{ managed_service(db.service, 'the database server', command=db.server_binary, user=db.user,
                   packaged=True, stop_seconds=60, start_seconds=3,
                   watch=[{'file': 'sqlgate-db-config'}],
                   require=[{'sls': 'sqlgate.db.config'}],
                   ready='mysqladmin --socket=' ~ db.socket ~ ' ping >/dev/null 2>&1') }}
