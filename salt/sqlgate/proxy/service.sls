{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}
{%- from tpldir.split('/')[0] ~ '/services.jinja' import managed_service with context %}
{%- from tpldir.split('/')[0] ~ '/tls.jinja' import tls, tls_watch with context %}
{%- set app = sqlgate.app %}
{%- set port = sqlgate.ports.proxy %}

include:
  - sqlgate.app
  - .config
{%- if sqlgate.service_manager == 'supervisor' %}
  - sqlgate.supervisor
{%- endif %}

{#- It restarts with new settings, code or certificates. Ready: it answers over HTTPS, to this
    host's own certificate (every host's is a client certificate of the cluster CA too), under
    the name its certificate carries. #}
{{ managed_service('sqlgate-proxy', 'sqlgate Proxy (read/write splitting)',
                   command=app.venv ~ '/bin/python -m services.proxy --env-file '
                           ~ app.config_dir ~ '/proxy.env',
                   user=app.user, stop_seconds=sqlgate.proxy.stop_seconds,
                   watch=[{'file': 'sqlgate-proxy-env'},
                          {'cmd': 'sqlgate-app-installed'}] + tls_watch,
                   require=[{'sls': 'sqlgate.proxy.config'}, {'sls': 'sqlgate.app'}],
                   ready='curl -fsS -o /dev/null --cacert ' ~ tls.ca ~ ' --cert ' ~ tls.cert
                         ~ ' --key ' ~ tls.key ~ ' --resolve ' ~ grains.id ~ ':' ~ port
                         ~ ':127.0.0.1 https://' ~ grains.id ~ ':' ~ port ~ '/health') }}
