{#- The monitor host's TLS files (tls.jinja), owned by Prometheus's user: its certificate
    serves the UI and is its client certificate when it scrapes the services' metrics. #}
{%- from tpldir.split('/')[0] ~ '/map.jinja' import sqlgate with context %}
{%- from tpldir.split('/')[0] ~ '/tls.jinja' import tls_files with context %}

include:
  - .package

{{ tls_files(sqlgate.monitor.user, [{'pkg': 'sqlgate-monitor-package'}]) }}
