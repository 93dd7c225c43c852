{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}
{%- from tpldir.split('/')[0] ~ '/services.jinja' import managed_service with context %}
{%- set app = sqlgate.app %}

include:
  - sqlgate.app
  - .config
{%- if sqlgate.service_manager == 'supervisor' %}
  - sqlgate.supervisor
{%- endif %}

{{ managed_service('sqlgate-proxy', 'sqlgate Proxy (read/write splitting)',
                   command=app.venv ~ '/bin/python -m services.proxy --env-file '
                           ~ app.config_dir ~ '/proxy.env',
                   user=app.user,
                   watch=[{'file': 'sqlgate-proxy-env'},
                          {'cmd': 'sqlgate-app-installed'}],
                   require=[{'sls': 'sqlgate.proxy.config'}, {'sls': 'sqlgate.app'}],
                   ready='curl -fsS -o /dev/null http://127.0.0.1:' ~ sqlgate.ports.proxy ~ '/health') }}
