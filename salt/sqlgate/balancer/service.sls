{#- HAProxy in master-worker mode: by the package's unit (systemd, which reloads it) or as a
    supervisor program, reloaded with USR2 when its settings change, so that a change of
    Gatekeepers (bootstrap.py scale) drops no connection: the old workers finish theirs.
    Ready: a Gatekeeper answers /health through it. #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}
{%- from tpldir.split('/')[0] ~ '/services.jinja' import managed_service with context %}
{%- from tpldir.split('/')[0] ~ '/tls.jinja' import tls, tls_watch with context %}
{%- set balancer = sqlgate.balancer %}
{%- set port = sqlgate.ports.gatekeeper %}

include:
  - .config
  - .tls
{%- if sqlgate.service_manager == 'supervisor' %}
  - sqlgate.supervisor
{%- endif %}

{{ managed_service(balancer.service, 'HAProxy (the balancer in front of the Gatekeepers)',
                   command=balancer.binary ~ ' -W -db -f ' ~ balancer.config_file,
                   packaged=True, stop_seconds=20, reload_signal='USR2',
                   watch=[{'file': 'sqlgate-balancer-config'}] + tls_watch,
                   require=[{'sls': 'sqlgate.balancer.config'}, {'sls': 'sqlgate.balancer.tls'}],
                   ready='curl -fsS -o /dev/null --cacert ' ~ tls.ca ~ ' --resolve gatekeeper:'
                         ~ port ~ ':127.0.0.1 https://gatekeeper:' ~ port ~ '/health') }}
