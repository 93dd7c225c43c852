{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}
{%- from tpldir.split('/')[0] ~ '/services.jinja' import managed_service with context %}
{%- set app = sqlgate.app %}

include:
  - sqlgate.app
  - .config
{%- if sqlgate.service_manager == 'supervisor' %}
  - sqlgate.supervisor
{%- endif %}

{{ managed_service('sqlgate-gatekeeper', 'sqlgate Gatekeeper (API key check, public entry)',
                   command=app.venv ~ '/bin/python -m services.gatekeeper --env-file '
                           ~ app.config_dir ~ '/gatekeeper.env',
                   user=app.user, capabilities=['CAP_NET_BIND_SERVICE'],
                   watch=[{'file': 'sqlgate-gatekeeper-env'},
                          {'file': 'sqlgate-gatekeeper-key'},
                          {'cmd': 'sqlgate-app-installed'}],
                   require=[{'sls': 'sqlgate.gatekeeper.config'}, {'sls': 'sqlgate.app'}],
                   ready='curl -fsS -o /dev/null http://127.0.0.1:' ~ sqlgate.ports.gatekeeper
                         ~ '/health') }}
