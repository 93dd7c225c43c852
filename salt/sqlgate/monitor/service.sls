{#- Prometheus, run as the package's user: by the package's unit (systemd, its arguments in
    the package's defaults file) or as a supervisor program. It restarts with new settings,
    rules, consoles or certificates. Ready: it answers /-/ready over HTTPS, checked against
    the cluster CA under the name its certificate carries. #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}
{%- from tpldir.split('/')[0] ~ '/services.jinja' import managed_service with context %}
{%- from tpldir.split('/')[0] ~ '/tls.jinja' import tls, tls_watch with context %}
{%- from tpldir.split('/')[0] ~ '/monitor/args.jinja' import prometheus_args with context %}
{%- set monitor = sqlgate.monitor %}
{%- set port = sqlgate.ports.prometheus %}

include:
  - .config
  - .tls
{%- if sqlgate.service_manager == 'supervisor' %}
  - sqlgate.supervisor
{%- endif %}

{{ managed_service(monitor.service, 'Prometheus (the cluster monitor)',
                   command=monitor.binary ~ ' ' ~ prometheus_args | join(' '),
                   user=monitor.user, packaged=True, stop_seconds=20,
                   watch=[{'file': 'sqlgate-monitor-args'}, {'file': 'sqlgate-monitor-config'},
                          {'file': 'sqlgate-monitor-rules'}, {'file': 'sqlgate-monitor-web'},
                          {'file': 'sqlgate-monitor-consoles'}] + tls_watch,
                   require=[{'sls': 'sqlgate.monitor.config'}, {'sls': 'sqlgate.monitor.tls'}],
                   ready='curl -fsS -o /dev/null --cacert ' ~ tls.ca ~ ' --resolve ' ~ grains.id
                         ~ ':' ~ port ~ ':127.0.0.1 https://' ~ grains.id ~ ':' ~ port
                         ~ '/-/ready') }}
