{#- The database server, running and answering: other states require `cmd: <service>-ready`
    (mariadb-ready or mysql-ready, services.jinja). #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}
{%- from tpldir.split('/')[0] ~ '/services.jinja' import managed_service with context %}
{%- from tpldir.split('/')[0] ~ '/tls.jinja' import tls_watch with context %}
{%- set db = sqlgate.db %}

include:
  - .config
  - .tls
{%- if sqlgate.service_manager == 'supervisor' %}
  - sqlgate.supervisor
{%- endif %}

{#- It restarts with new settings or certificates. #}
{{ managed_service(db.service, 'the database server', command=db.server_binary, user=db.user,
                   packaged=True, stop_seconds=60, start_seconds=3,
                   watch=[{'file': 'sqlgate-db-config'}] + tls_watch,
                   require=[{'sls': 'sqlgate.db.config'}, {'sls': 'sqlgate.db.tls'}],
                   ready='mysqladmin --socket=' ~ db.socket ~ ' ping >/dev/null 2>&1') }}
