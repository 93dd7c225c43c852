{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate, roles with context %}
{%- from tpldir.split('/')[0] ~ '/services.jinja' import managed_service with context %}
{%- from tpldir.split('/')[0] ~ '/tls.jinja' import tls_watch with context %}
{%- set app = sqlgate.app %}
{%- set store_password = [{'file': 'sqlgate-gatekeeper-ratestore-password'}]
                         if roles.get('monitor') else [] %}
{%- set public = [{'file': 'sqlgate-gatekeeper-public-cert'},
                  {'file': 'sqlgate-gatekeeper-public-key'}]
                 if sqlgate.tls.get('gatekeeper_public') else [] %}

include:
  - sqlgate.app
  - .config
{%- if sqlgate.service_manager == 'supervisor' %}
  - sqlgate.supervisor
{%- endif %}

{#- It restarts with new settings, code or certificates; not with new API keys nor a new list
    of Proxies (the keys file and the Proxy list file, which it reloads by itself). Ready: it answers over HTTPS on this host. The check does not
    verify the certificate: a user's public one may name a domain this host cannot resolve, and
    nothing secret is sent. #}
{{ managed_service('sqlgate-gatekeeper', 'sqlgate Gatekeeper (API keys, public HTTPS entry)',
                   command=app.venv ~ '/bin/python -m services.gatekeeper --env-file '
                           ~ app.config_dir ~ '/gatekeeper.env',
                   user=app.user, stop_seconds=sqlgate.gatekeeper.stop_seconds,
                   capabilities=['CAP_NET_BIND_SERVICE'],
                   watch=[{'file': 'sqlgate-gatekeeper-env'}] + store_password + [
                          {'cmd': 'sqlgate-app-installed'}] + tls_watch + public,
                   require=[{'sls': 'sqlgate.gatekeeper.config'}, {'sls': 'sqlgate.app'}],
                   ready='curl -fsSk -o /dev/null https://127.0.0.1:' ~ sqlgate.ports.gatekeeper
                         ~ '/health') }}
